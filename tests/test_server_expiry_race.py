"""The server on a JSONL store, a peer's append taken a moment before the session's TTL
ran out and still being written (its log sync held) after it ran out: the append is
acknowledged and renews the session, so its peers are not closed 4404 ``session
expired``, neither by the actor's periodic look at the session (it looks between its
appends) nor by a ``hello`` with ``create`` that would replace it, which is welcomed to
the session the append renewed instead (or closed 1011 if the append is not stored
within the read deadline: the peers stay). Hellos that came meanwhile wait for that
hello's creation, then take turns: one creation of the session at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorageConfig
from bamboo_session.server.app import BambooServer
from tests.held_delete_support import closed_with, embedded, held_log_sync
from tests.instances import eventually
from tests.support import Peer, attach, open_peer, token

# Long enough for the append, taken a second before the expiry, to renew the session
# well past the moment its held write is let go; the server looks at a connected
# session every third of it.
TTL = 3


@contextlib.asynccontextmanager
async def server_on_jsonl(
    tmp_path: Path, store_read_timeout: float = 30, ttl: int = TTL, **settings: Any
) -> AsyncIterator[BambooServer]:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync", default_ttl=ttl)
    config = config.with_wal(enabled=False)
    async with embedded(config, store_read_timeout=store_read_timeout, **settings) as server:
        yield server


async def publish_held_past_expiry(
    server: BambooServer, agent: Peer, monkeypatch: pytest.MonkeyPatch
) -> threading.Event:
    """The agent's event, sent a second before session ``s`` expires, its write held
    until the expiry has passed (let go by the event returned)."""
    storage = server.manager.storage
    metadata = await storage.get_metadata("s")
    assert metadata is not None and metadata.expires_at is not None
    expiry = metadata.expires_at
    await eventually(lambda: storage.now() > expiry - timedelta(seconds=1), timeout=60)
    started, release = held_log_sync(monkeypatch)
    await agent.send({"type": "event", "id": 1, "event": token("late")})
    assert await asyncio.to_thread(started.wait, 30)  # taken before the expiry, held
    await eventually(lambda: storage.now() > expiry, timeout=60)
    return release


async def still_open(peer: Peer) -> None:
    assert await peer.request({"type": "ping", "id": "p"}, "pong") == {"type": "pong", "id": "p"}


async def test_the_periodic_look_leaves_a_session_whose_append_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server_on_jsonl(tmp_path) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, welcome):
            release = await publish_held_past_expiry(server, agent, monkeypatch)
            await asyncio.sleep(TTL / 3 + 0.5)  # a look came due meanwhile
            release.set()
            ack = await agent.recv_type("ack")
            assert (ack["id"], ack["seq"]) == (1, 1)
            await still_open(agent)
            metadata = await server.manager.storage.get_metadata("s")
            assert metadata is not None and metadata.epoch == welcome["epoch"]
            assert not metadata.is_expired(server.manager.storage.now())


async def test_a_create_leaves_a_session_whose_append_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server_on_jsonl(tmp_path) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, welcome):
            release = await publish_held_past_expiry(server, agent, monkeypatch)
            creating = asyncio.create_task(hello_with_create(server))
            await eventually(lambda: "s" in server.manager.creations, timeout=30)
            release.set()
            ack = await agent.recv_type("ack")
            assert (ack["id"], ack["seq"]) == (1, 1)
            theirs = await creating
            assert (theirs["epoch"], theirs["last_seq"]) == (welcome["epoch"], 1)
            await still_open(agent)


async def test_a_create_welcomed_to_the_renewed_session_spends_no_creation_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tokens for two creations, none refilled within the test: the agent's takes one.
    tokens = {"session_create_rate": 0.001, "session_create_burst": 2}
    async with server_on_jsonl(tmp_path, **tokens) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, welcome):
            release = await publish_held_past_expiry(server, agent, monkeypatch)
            creating = asyncio.create_task(hello_with_create(server))
            await eventually(lambda: "s" in server.manager.creations, timeout=30)
            release.set()
            assert (await agent.recv_type("ack"))["seq"] == 1
            assert (await creating)["epoch"] == welcome["epoch"]  # created nothing
        # So the token it asked for is the creator's still: a new session takes it.
        async with attach(server, "t", create=True) as (_, made):
            assert made["session"]["id"] == "t" and made["last_seq"] == 0


async def hello_with_create(server: BambooServer) -> dict[str, Any]:
    """The welcome of a hello with create to ``s``."""
    async with attach(server, "s", create=True, user_id="other") as (_, theirs):
        return theirs


async def test_a_create_given_up_on_leaves_the_peers_of_a_session_whose_append_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server_on_jsonl(tmp_path, store_read_timeout=1) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, welcome):
            release = await publish_held_past_expiry(server, agent, monkeypatch)
            try:
                async with open_peer(server, "s") as late:
                    await late.send({"type": "hello", "create": True, "user_id": "other"})
                    await closed_with(late, 1011)  # the append not stored by its deadline
            finally:
                release.set()
            ack = await agent.recv_type("ack")
            assert (ack["id"], ack["seq"]) == (1, 1)
            await still_open(agent)
            async with attach(server, "s", create=True, user_id="other") as (_, theirs):
                assert (theirs["epoch"], theirs["last_seq"]) == (welcome["epoch"], 1)


async def test_hellos_that_waited_for_a_create_given_up_on_create_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The creation of the first hello is given up on at its read deadline (the append it
    # waits for is held); those that waited for it look again, and the first of them to
    # find the session expired still creates it, the others waiting for that one. They
    # each started a creation of their own, the one under way forgotten: each waited a
    # read deadline of its own, one after the other (behind the owner's lock), which
    # held the session five deadlines past the renewal of its append (its peers were
    # closed 4404), and the first to end took the next one's place off the books, which
    # then failed to (KeyError in a callback: a traceback in the log).
    caplog.set_level(logging.WARNING)
    # A TTL that the held append, taken a second before the expiry, renews well past
    # the two read deadlines the creations wait for it.
    async with server_on_jsonl(tmp_path, store_read_timeout=1, ttl=5) as server:
        async with attach(server, "s", create=True, role="agent") as (agent, welcome):
            release = await publish_held_past_expiry(server, agent, monkeypatch)
            try:
                first = asyncio.create_task(refused_create(server))
                await eventually(lambda: "s" in server.manager.creations, timeout=30)
                later = [asyncio.create_task(refused_create(server)) for _ in range(4)]
                codes = await asyncio.gather(first, *later)
            finally:
                release.set()
            assert codes == [1011] * 5
            ack = await agent.recv_type("ack")
            assert (ack["id"], ack["seq"]) == (1, 1)
            await still_open(agent)
            async with attach(server, "s", create=True, user_id="other") as (_, theirs):
                assert (theirs["epoch"], theirs["last_seq"]) == (welcome["epoch"], 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records


async def refused_create(server: BambooServer) -> int | None:
    """The close code of a hello with create to ``s`` that is not welcomed."""
    async with open_peer(server, "s") as late:
        await late.send({"type": "hello", "create": True, "user_id": "other"})
        code, frames = await late.closed(60)
        assert not [f for f in frames if f["type"] == "welcome"], frames
        return code
