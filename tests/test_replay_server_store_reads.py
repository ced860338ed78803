"""Resume replays read from the store on a real server: store reads of replay pages
wait for a page-read slot; a replay stops once its connection is closing (a deletion,
or a close with a live event behind a gap), unless the session was closed under it
(then it finishes); and after a restart, the viewers of a session who resume at once
cause one store read."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.replay_support import SlotsTaken, metric, publish
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import Peer, attach, run_server, token


async def test_a_replay_cut_short_by_a_close_sends_no_live_event_past_its_gap() -> None:
    """A live event is queued behind a replay, then the session closes: the replay
    stops, and the live event goes too (it would follow a gap); the close comes."""
    async with run_server(ring_size=0) as server:  # no ring: replays read the store
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, 20)
            async with SlotsTaken(server.services.page_reads) as taken:
                async with attach(server, session_id, last_seq=0) as (viewer, resumed):
                    assert resumed["replay"] == 20  # its first page waits for a slot
                    live = {"type": "event", "id": "live", "event": token("x")}
                    await agent.request(live, "ack")  # seq 21, queued behind the replay
                    await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                    taken.give_back()
                    code, frames = await viewer.closed()
        seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
        assert seqs in ([], list(range(1, 22))), f"events {seqs} after a replay that stopped"
        assert code == 1000


async def test_a_replay_read_from_the_store_waits_for_a_page_read_slot() -> None:
    async with run_server(ring_size=0) as server:  # no ring: replays read the store
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, 3)
        async with SlotsTaken(server.services.page_reads) as taken:
            async with attach(server, session_id, last_seq=0) as (peer, resumed):
                assert resumed["replay"] == 3
                with pytest.raises(TimeoutError):  # eight pages are being read elsewhere
                    await peer.recv(timeout=0.5)
                taken.give_back(1)
                assert [(await peer.recv_type("event"))["seq"] for _ in range(3)] == [1, 2, 3]


async def test_a_replay_goes_on_when_its_session_closes_under_it() -> None:
    """Closed, the session lets the replay finish (its peers cannot resume): the page
    that waited for a slot, and the next, are read and sent, then ``closed``."""
    async with run_server(ring_size=0) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, 600)  # two pages of 512 events at most
            async with SlotsTaken(server.services.page_reads) as taken:
                async with attach(server, session_id, last_seq=0) as (viewer, resumed):
                    assert resumed["replay"] == 600  # its page waits for a slot
                    await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                    taken.give_back()
                    code, frames = await viewer.closed()
        assert code == 1000
        assert [frame["seq"] for frame in frames[:-1]] == list(range(1, 601))
        assert frames[-1]["type"] == "closed"
        metrics = server.metrics.render().decode()
        assert metric(metrics, "bamboo_replay_store_reads_total") == 2


async def test_a_replay_stops_when_its_session_is_deleted_under_it() -> None:
    """Deleted, the session's log is gone: a replay goes no further than its page under
    way (here none: it waited for a slot), then ``closed`` and 4404."""
    async with run_server(ring_size=0) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, 20)
            async with SlotsTaken(server.services.page_reads) as taken:
                async with attach(server, session_id, last_seq=0) as (viewer, resumed):
                    assert resumed["replay"] == 20  # its page waits for a slot
                    await server.manager.delete_session(session_id)
                    taken.give_back()
                    code, frames = await viewer.closed()
        assert code == 4404
        assert [frame["type"] for frame in frames] == ["closed"]  # nothing of the replay
        metrics = server.metrics.render().decode()
        assert metric(metrics, "bamboo_replay_store_reads_total") <= 1  # no page after it


# -- after a restart -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def peer_on(server: ServerProcess, session_id: str, **hello: Any) -> AsyncIterator[Peer]:
    async with connect(server.url(session_id), subprotocols=["bamboo.v1"]) as ws:  # type: ignore[list-item]
        peer = Peer(ws)
        await peer.send({"type": "hello", **hello})
        peer.welcome = await peer.recv()  # type: ignore[attr-defined]
        yield peer


def store_reads(server: ServerProcess) -> float:
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return metric(response.read().decode(), "bamboo_replay_store_reads_total")


async def test_after_a_restart_the_viewers_of_a_session_resume_with_one_store_read(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--durability", "os")
    server.start()
    try:
        async with peer_on(server, "talk", create=True, role="agent") as agent:
            epoch = agent.welcome["epoch"]  # type: ignore[attr-defined]
            await publish(agent, 30)
        assert server.stop() == 0
        server.start()  # a new process: every ring is empty

        async def resume(last_seq: int) -> list[int]:
            async with peer_on(server, "talk", last_seq=last_seq, epoch=epoch) as viewer:
                welcome = viewer.welcome  # type: ignore[attr-defined]
                assert welcome["resumed"] and welcome["replay"] == 30 - last_seq
                return [(await viewer.recv_type("event"))["seq"] for _ in range(30 - last_seq)]

        viewers = await asyncio.gather(*(resume(10) for _ in range(5)))
        assert viewers == [list(range(11, 31))] * 5  # each missed event once, in order
        assert await asyncio.to_thread(store_reads, server) == 1
        # Further back: one more read, for what the ring does not hold; then none.
        assert await resume(4) == list(range(5, 31))
        assert await resume(4) == list(range(5, 31))
        assert await asyncio.to_thread(store_reads, server) == 2
        assert server.stop() == 0
        assert_no_tracebacks(server.log_records())
    finally:
        server.kill()
