"""A store that fails while a connection leaves its session (Redis killed): the room
still lets it go (its peers see it leave, with the room's own count), and the last one
out parks the session all the same. The move to ``disconnected`` reaches the store once
it is back, at the session's next look (every ``idle_timeout``), and the parked actor
is retired after ``disconnect_retention``, as any parked one; a new attach works. The
same holds for the leave an attach does when its caller gave up waiting for the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.actor import SessionActor
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, open_peer, run_server

DEADLINE = 1.0  # the store read deadline: an attach is given up on after it


@contextlib.asynccontextmanager
async def server_on_own_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, **config: Any
) -> AsyncIterator[tuple[BambooServer, RedisServer]]:
    """A server on a redis-server of its own, to kill and start again (its AOF keeps
    every write); presence's heartbeat is 1 s, so a leave Redis missed expires soon."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=store, store_read_timeout=DEADLINE, **config) as server:
        yield server, redis


def live(server: BambooServer, session_id: str) -> SessionActor:
    actor = server.manager.live_actor(session_id)
    assert actor is not None
    return actor


async def done_with_commands(actor: SessionActor) -> None:
    """Waits until the actor has handled every command (its task ends when parked)."""
    await eventually(lambda: actor.task is None and not actor.room.outboxes)


async def left_while_redis_is_away(
    server: BambooServer, redis: RedisServer, session_id: str
) -> SessionActor:
    """A new session's only peer leaves once its redis-server is killed; its actor, once
    done with the leave."""
    async with attach(server, session_id, create=True) as (peer, _):
        actor = live(server, session_id)
        redis.stop(signal.SIGKILL)
        await peer.close()
    await done_with_commands(actor)
    return actor


async def metadata(server: BambooServer, session_id: str) -> dict[str, Any]:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    found: dict[str, Any] = body["metadata"]
    return found


async def parked_and_saved(server: BambooServer, session_id: str) -> bool:
    """The store says what the server does: nobody attached, ``disconnected``."""
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    found = body.get("metadata", {}) if status == 200 else {}
    return found.get("state") == "disconnected" and found.get("connections") == 0


async def attach_when_back(server: BambooServer, session_id: str) -> dict[str, Any]:
    """A hello, again until welcomed (closed 1011 while the store's pub/sub connection
    is still reconnecting); the welcome, then the peer leaves."""
    for _ in range(50):
        async with open_peer(server, session_id) as peer:
            await peer.send({"type": "hello"})
            with contextlib.suppress(ConnectionClosed):
                frame = await peer.recv()
                if frame["type"] == "welcome":
                    return frame
        await asyncio.sleep(0.1)
    raise AssertionError("no welcome once the store was back")


def pause_writes(redis: RedisServer, seconds: float) -> None:
    """Redis holds every write (and script) for ``seconds``, and serves reads."""
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as conn:
        conn.sendall(f"CLIENT PAUSE {round(seconds * 1000)} WRITE\r\n".encode())
        assert conn.recv(16).startswith(b"+OK")


async def test_the_last_connection_out_while_redis_is_away_parks_the_session(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis is killed under two peers, who then leave: the viewer sees the agent go,
    counted by the room; the session parks, and once Redis is back it is saved as
    ``disconnected`` at the next look (idle_timeout), not left ``active`` for ever,
    and stays in memory for its retention, not just until that look."""
    config = {"idle_timeout": 0.3, "disconnect_retention": 60.0}
    async with server_on_own_redis(start_redis, tmp_path, **config) as (server, redis):
        async with attach(server, "d", create=True) as (viewer, _):
            async with attach(server, "d", role="agent") as (agent, welcome):
                joined = await viewer.recv_type("presence")
                assert joined["connections"] == 2
                actor = live(server, "d")
                redis.stop(signal.SIGKILL)
                await agent.close()
            left = await viewer.recv_type("presence")
            assert (left["left"], left["connections"]) == (welcome["connection_id"], 1)
        await done_with_commands(actor)
        assert actor.room.outboxes == {} and not actor.following.active
        await asyncio.sleep(1.0)  # three looks fail to save its state meanwhile
        assert live(server, "d") is actor and actor.accepting

        redis.start()
        await eventually(lambda: parked_and_saved(server, "d"), timeout=10)
        assert live(server, "d") is actor  # parked for its retention, not retired early
        assert actor.accepting
        welcome = await attach_when_back(server, "d")
        assert (welcome["session"]["state"], welcome["session"]["connections"]) == ("active", 1)
        await eventually(lambda: parked_and_saved(server, "d"))


async def test_a_session_parked_while_redis_was_away_retires_after_its_retention(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The retention (1 s) is shorter than the next look (idle_timeout, 60 s): the
    parked actor is retired after the retention all the same, saving its state first."""
    config = {"idle_timeout": 60.0, "disconnect_retention": 1.0}
    async with server_on_own_redis(start_redis, tmp_path, **config) as (server, redis):
        actor = await left_while_redis_is_away(server, redis, "r")
        redis.start()
        await eventually(lambda: server.manager.live_actor("r") is None, timeout=5)
        assert not actor.accepting
        assert (await metadata(server, "r"))["state"] == "disconnected"
        welcome = await attach_when_back(server, "r")
        assert welcome["session"]["state"] == "active"


async def test_a_session_parked_while_redis_stays_away_retires_all_the_same(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Its looks (every 0.2 s) fail to save its state for the whole retention (1.5 s):
    it is retired at the end of it, not kept trying, nor retired at the first look."""
    config = {"idle_timeout": 0.2, "disconnect_retention": 1.5}
    async with server_on_own_redis(start_redis, tmp_path, **config) as (server, redis):
        actor = await left_while_redis_is_away(server, redis, "s")
        parked = asyncio.get_running_loop().time()
        await asyncio.sleep(0.8)
        assert live(server, "s") is actor and actor.accepting
        await eventually(lambda: server.manager.live_actor("s") is None, timeout=3)
        assert asyncio.get_running_loop().time() - parked < 1.5 + 1.0
        assert actor.finished
        redis.start()
        welcome = await attach_when_back(server, "s")
        assert welcome["session"]["state"] == "active"


async def test_an_attach_given_up_on_while_redis_dies_is_undone_and_the_actor_retires(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis holds the attach's presence write past the read deadline (its hello gets
    1011), then dies: the attach, found given up on, is undone (its presence's leave
    fails with Redis away). The session is as it was before the hello (a new one,
    active, nobody attached: the attach had moved nothing), and its actor retires after
    its retention all the same. Before 8fe488a a given-up attach was an attach and a
    detach, and parked the session as ``disconnected``."""
    config = {"idle_timeout": 60.0, "disconnect_retention": 1.0}
    async with server_on_own_redis(start_redis, tmp_path, **config) as (server, redis):
        await server.manager.create_session("u1", session_id="g")
        assert (await metadata(server, "g"))["state"] == "active"
        pause_writes(redis, 30)
        async with open_peer(server, "g") as peer:
            await peer.send({"type": "hello"})
            code, frames = await peer.closed(timeout=DEADLINE + 3)
        assert (code, frames) == (1011, [])
        actor = live(server, "g")
        assert actor.task is not None  # still waiting for Redis to take the presence write
        redis.stop(signal.SIGKILL)
        await eventually(lambda: server.manager.live_actor("g") is None, timeout=5)
        assert not actor.accepting and not actor.room.outboxes
        redis.start()
        found = await metadata(server, "g")
        assert (found["state"], found["connections"]) == ("active", 0)
        welcome = await attach_when_back(server, "g")
        assert welcome["session"]["connections"] == 1


OUTAGE_SESSIONS = 8


async def test_disconnects_while_redis_refuses_writes_are_one_line_then_counts(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis at its ``maxmemory`` (``noeviction``: every write refused, reads served),
    and the last peer of each of 8 sessions leaves: each session parks all the same,
    its state owed. The log tells the outage as it tells failed attaches: one
    ``storage failed`` line, the rest counted by command (``storage failing``, told
    here at the server's stop); before, each disconnect logged ``saving the
    disconnected state failed; saved later`` (h346: 10 to 20 lines an instance in an
    8 s fault). Once Redis takes writes again, each owed state is saved."""
    config = {"idle_timeout": 0.5, "disconnect_retention": 60.0}
    names = [f"o{i}" for i in range(OUTAGE_SESSIONS)]
    redis = start_redis("redis")
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)
    told = {"storage failed", "storage failing"}

    async def saved() -> bool:
        stored = [await server.storage.get_metadata(name) for name in names]
        return all(m is not None and m.state == "disconnected" for m in stored)

    try:
        with contextlib.ExitStack() as capturing:  # ends after the server's stop
            async with server_on_own_redis(lambda _: redis, tmp_path, **config) as (server, _):
                logs = capturing.enter_context(capture_logs(processors=[merge_contextvars]))
                async with contextlib.AsyncExitStack() as peers:
                    for name in names:
                        await peers.enter_async_context(attach(server, name, create=True))
                    actors = [live(server, name) for name in names]
                    await client.config_set("maxmemory-policy", "noeviction")
                    await client.config_set("maxmemory", "1")
                # Every last peer has left.
                for actor in actors:
                    await done_with_commands(actor)
                assert all(actor.status.owed for actor in actors)  # parked, not saved yet
                warnings = [line for line in logs if line["log_level"] == "warning"]
                assert not [line for line in warnings if "disconnected state" in line["event"]]
                [first] = [line for line in logs if line["event"] in told]
                assert first["event"] == "storage failed", first
                assert "maxmemory" in first["error"], first
                assert len(warnings) < OUTAGE_SESSIONS, [line["event"] for line in warnings]
                await client.config_set("maxmemory", "0")
                await eventually(saved, timeout=10)  # at each session's next look
                assert not any(actor.status.owed for actor in actors)
        # The server's stop tells what the first line did not: every disconnect is
        # counted, on that line or in the summary.
        lines = [line for line in logs if line["event"] in told]
        assert [line["event"] for line in lines] == ["storage failed", "storage failing"]
        detaches = (first["command"] == "Detach") + lines[1]["commands"].get("Detach", 0)
        assert detaches == OUTAGE_SESSIONS, lines
    finally:
        await client.aclose()
