"""Integration tests of resume (PROTOCOL.md "Resume"): no gap, no duplicate, ever."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import Peer, attach, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def publish(peer: Peer, count: int, start: int = 0) -> list[int]:
    seqs = []
    for i in range(start, start + count):
        ack = await peer.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
        seqs.append(ack["seq"])
    return seqs


async def test_resume_replays_exactly_what_was_missed() -> None:
    async with run_server() as server, attach(server, role="agent") as (agent, welcome):
        session_id, epoch = welcome["session"]["id"], welcome["epoch"]
        await publish(agent, 10)
        async with attach(server, session_id, last_seq=4, epoch=epoch) as (peer, resumed):
            assert resumed["resumed"] is True and resumed["replay"] == 6
            assert resumed["last_seq"] == 10
            replayed = [await peer.recv() for _ in range(6)]
            assert [f["seq"] for f in replayed] == [5, 6, 7, 8, 9, 10]
            assert [f["event"]["content"] for f in replayed] == [str(i) for i in range(4, 10)]
            await publish(agent, 1, start=10)
            live = await peer.recv_type("event")
            assert live["seq"] == 11


async def test_last_seq_zero_replays_everything_and_last_seq_alone_means_this_epoch() -> None:
    async with run_server() as server, attach(server) as (agent, welcome):
        session_id = welcome["session"]["id"]
        await publish(agent, 3)
        async with attach(server, session_id, last_seq=0, epoch=welcome["epoch"]) as (peer, w):
            assert w["resumed"] and w["replay"] == 3
            assert [(await peer.recv())["seq"] for _ in range(3)] == [1, 2, 3]
        async with attach(server, session_id, last_seq=2) as (peer, w):
            assert w["resumed"] and w["replay"] == 1
            assert (await peer.recv())["seq"] == 3


async def test_no_resume_on_other_epoch_or_beyond_the_end_or_without_last_seq() -> None:
    async with run_server() as server, attach(server) as (agent, welcome):
        session_id = welcome["session"]["id"]
        await publish(agent, 3)
        cases: list[dict[str, Any]] = [
            {"last_seq": 1, "epoch": "another-epoch"},
            {"last_seq": 9, "epoch": welcome["epoch"]},
            {},
        ]
        for hello in cases:
            async with attach(server, session_id, **hello) as (peer, w):
                assert w["resumed"] is False and w["replay"] == 0 and w["last_seq"] == 3
                pong = await peer.request({"type": "ping", "id": "p"}, "pong")
                assert pong["id"] == "p"  # no event frame was sent before the pong


async def test_resume_while_events_are_being_published_has_no_gap_and_no_duplicate() -> None:
    total = 1500
    async with run_server(ring_size=64) as server, attach(server, role="agent") as (agent, welcome):
        session_id, epoch = welcome["session"]["id"], welcome["epoch"]

        async def publish_all() -> None:
            for i in range(total):
                await agent.send({"type": "event", "id": i, "event": token(str(i))})
                if i % 50 == 0:
                    await asyncio.sleep(0)  # let attaches interleave with the stream

        publisher = asyncio.create_task(publish_all())
        seen_by_viewer: list[list[int]] = []
        for join_after in (100, 400, 900):
            while (await agent.recv_type("ack"))["seq"] < join_after:
                pass
            async with attach(server, session_id, last_seq=0, epoch=epoch) as (viewer, w):
                assert w["resumed"]
                seqs = []
                while not seqs or seqs[-1] < total:
                    frame = await viewer.recv_type("event")
                    seqs.append(frame["seq"])
                seen_by_viewer.append(seqs)
        await publisher
        for seqs in seen_by_viewer:
            assert seqs == list(range(1, total + 1))


@pytest.mark.durable
async def test_resume_after_a_restart_reads_the_log_from_disk(tmp_path: Path) -> None:
    async with (
        run_server(data_dir=tmp_path) as server,
        attach(server, "s", create=True) as (
            agent,
            welcome,
        ),
    ):
        epoch = welcome["epoch"]
        await publish(agent, 5)
    async with (
        run_server(data_dir=tmp_path) as server,
        attach(server, "s", last_seq=2, epoch=epoch) as (peer, w),
    ):
        assert w["resumed"] and w["replay"] == 3 and w["epoch"] == epoch
        assert [(await peer.recv())["seq"] for _ in range(3)] == [3, 4, 5]


async def test_resume_after_parking_expired_reads_from_disk() -> None:
    async with run_server(disconnect_retention=0.1) as server:
        async with attach(server) as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            await publish(agent, 4)
        for _ in range(100):
            if server.manager.live_actor(session_id) is None:
                break
            await asyncio.sleep(0.05)
        assert server.manager.live_actor(session_id) is None
        async with attach(server, session_id, last_seq=1, epoch=epoch) as (peer, w):
            assert w["resumed"] and w["replay"] == 3
            assert [(await peer.recv())["seq"] for _ in range(3)] == [2, 3, 4]


@pytest.mark.durable
async def test_graceful_shutdown_sends_closed_and_1012_then_resume_works(tmp_path: Path) -> None:
    server_cm = run_server(data_dir=tmp_path)
    server = await server_cm.__aenter__()
    try:
        async with attach(server, "s", create=True) as (peer, welcome):
            await publish(peer, 3)
            stopping = asyncio.create_task(server.stop())
            code, frames = await peer.closed()
            await stopping
            assert code == 1012 and frames[-1] == {"type": "closed", "reason": "server restarting"}
    finally:
        with contextlib.suppress(Exception):
            await server_cm.__aexit__(None, None, None)
    async with (
        run_server(data_dir=tmp_path) as server,
        attach(server, "s", last_seq=3, epoch=welcome["epoch"]) as (peer, w),
    ):
        assert w["resumed"] and w["replay"] == 0 and w["last_seq"] == 3


async def test_a_session_removed_by_cleanup_and_created_again_has_a_new_epoch() -> None:
    # The session expires and the store's cleanup removes it while its actor is parked
    # (disconnect_retention outlives the TTL). A new session of the same id is another
    # log: a client of the old one must not resume into it, so its epoch is new.
    async with run_server(default_ttl=1, disconnect_retention=60) as server:
        async with attach(server, "again", create=True) as (agent, old):
            await publish(agent, 3)
        await asyncio.sleep(1.2)
        assert await server.manager.storage.cleanup_expired_sessions() == 1
        async with attach(server, "again", create=True) as (agent, new):
            assert new["last_seq"] == 0
            assert new["epoch"] != old["epoch"]
            await publish(agent, 5)
            # A viewer of the old session comes back with what it saw of it.
            async with attach(server, "again", last_seq=1, epoch=old["epoch"]) as (_, late):
                assert late["resumed"] is False and late["replay"] == 0
                assert late["epoch"] == new["epoch"] and late["last_seq"] == 5
