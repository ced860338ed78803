"""A store that fails while a connection attaches to a parked session, whose actor
then writes twice: the activity (the session's TTL starts again) and the move to
``active``. Whichever of the two fails, the hello closes 1011 (``storage failed``)
and the session is left as it was: ``disconnected``, nobody attached, in memory and
in the store, so that a listing never shows an ``active`` session nobody is on.

The failure is a real Redis error that only the activity's write meets: the index of
sessions by activity (``{idx}:active``) holds a string, so its ZADD fails with
WRONGTYPE, while the move to ``active`` (which does not write that index) succeeds.
It stands for a store that fails between the two writes (a Redis that goes away
right after the first).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, open_peer, run_server


async def metadata(server: BambooServer, session_id: str) -> dict[str, Any]:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    found: dict[str, Any] = body["metadata"]
    return found


async def parked(server: BambooServer, session_id: str) -> bool:
    found = await metadata(server, session_id)
    return (found["state"], found.get("connections")) == ("disconnected", 0)


@contextlib.asynccontextmanager
async def activity_index_broken(redis: RedisServer, prefix: str) -> AsyncIterator[None]:
    """The index of sessions by last activity is a string while the block runs: every
    write of activity fails (WRONGTYPE); it is rebuilt empty afterwards."""
    key = f"{prefix}:{{idx}}:active"
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)
    try:
        await client.delete(key)
        await client.set(key, "not a sorted set")
        yield
    finally:
        await client.delete(key)
        await client.aclose()


async def test_an_attach_whose_activity_write_fails_leaves_the_session_parked(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = prefix_for(tmp_path)
    store = redis_server.url(prefix=prefix)
    async with run_server(store=store) as server:
        async with attach(server, "s", create=True):
            pass
        await eventually(lambda: parked(server, "s"))
        actor = server.manager.live_actor("s")
        assert actor is not None  # parked, in memory: the attach below writes its state
        async with activity_index_broken(redis_server, prefix):
            async with open_peer(server, "s") as peer:
                await peer.send({"type": "hello"})
                code, frames = await peer.closed()
            assert (code, frames) == (1011, [])
            assert peer.ws.close_reason == "storage failed; retry later"  # no key in a hello
            # Before: the store, and the actor, said ``active`` with nobody attached,
            # and kept saying it once parked again (the actor owed the store nothing).
            found = await metadata(server, "s")
            assert (found["state"], found.get("connections")) == ("disconnected", 0)
            assert actor.state == SessionState.DISCONNECTED and not actor.room.outboxes
        # The store writes activity again: the next attach is welcomed, as active.
        async with attach(server, "s") as (_peer, welcome):
            assert welcome["session"]["state"] == "active"
            assert (await metadata(server, "s"))["state"] == "active"
        await eventually(lambda: parked(server, "s"))


async def test_a_state_change_whose_activity_write_fails_changes_nothing(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A peer's ``state`` is a move and activity, as an attach is: when the activity
    fails, the request gets ``internal`` and the session keeps its state, in the store
    too (before, the session was closed in the store, while its peers stayed attached
    and were told it had failed)."""
    prefix = prefix_for(tmp_path)
    async with run_server(store=redis_server.url(prefix=prefix)) as server:
        async with attach(server, "s", create=True) as (peer, _welcome):
            async with activity_index_broken(redis_server, prefix):
                error = await peer.request({"type": "state", "id": 1, "state": "closed"}, "error")
                assert (error["id"], error["code"]) == (1, "internal")
                assert (await metadata(server, "s"))["state"] == "active"
            ack = await peer.request({"type": "state", "id": 2, "state": "closed"}, "ack")
            assert ack["id"] == 2
            assert (await peer.recv_type("closed"))["reason"] == "session closed"
        assert (await metadata(server, "s"))["state"] == "closed"


async def refused_hello(server: BambooServer) -> None:
    async with open_peer(server, "s") as peer:
        await peer.send({"type": "hello"})
        code, frames = await peer.closed()
    assert (code, frames) == (1011, [])


async def test_hellos_the_store_refuses_are_logged_once_an_outage_then_counted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Peers reconnecting to a store that fails their attach: the first refusal is
    logged at once, the later ones counted and told at most once an interval, with
    the commands that failed; after a quiet interval the next failure is a new outage,
    told at once again."""
    prefix = prefix_for(tmp_path)
    async with run_server(store=redis_server.url(prefix=prefix)) as server:
        async with attach(server, "s", create=True):
            pass
        await eventually(lambda: parked(server, "s"))
        failures = server.manager.append_health.command_failures
        told = {"storage failed", "storage failing"}
        async with activity_index_broken(redis_server, prefix):
            with capture_logs(processors=[merge_contextvars]) as logs:
                for _ in range(10):
                    await refused_hello(server)
                (first,) = [line for line in logs if line["event"] in told]
                assert (first["log_level"], first["command"]) == ("warning", "Attach")
                assert first["session_id"] == "s" and "WRONGTYPE" in first["error"]
                failures.every = 0.0  # the interval is over at the next failure
                await refused_hello(server)
                summary = [line for line in logs if line["event"] in told][1:]
                assert [(s["event"], s["failed"], s["commands"]) for s in summary] == [
                    ("storage failing", 10, {"Attach": 10})
                ]
                assert "WRONGTYPE" in summary[0]["last_error"]
                failures.every, failures.quiet = 3600.0, 0.0  # an outage of each failure
                await refused_hello(server)
                assert [line["event"] for line in logs if line["event"] in told] == [
                    "storage failed",
                    "storage failing",
                    "storage failed",
                ]
