"""After a Redis ``state`` change in doubt (its reply lost after Redis ran it), the
session's actor, which other connections keep live, reads the state the store holds
rather than serve the one it held before: the resume of the requester is welcomed as
a GET then shows the session (an attach to an idle session is activity), and a close
that stands ends the other connections at once, even where no notice tells of it
(``wait_replicas``: the write's notice goes out only once its reply is in). Real
redis-servers (a primary and its replica) behind a proxy that loses the state
script's reply, a real server, real WebSocket peers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import redis.asyncio

from bamboo_session.server.failures import STATE_IN_DOUBT
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, link_replica, prefix_for, store_through_proxy
from tests.support import attach, get, open_peer, run_server
from tests.test_redis_state_in_doubt import (
    SLACK,
    STATE_SCRIPT,
    load_state_script,
    read_until_close,
)

IDLE: dict[str, Any] = {"type": "state", "id": 2, "state": "idle"}
CLOSE: dict[str, Any] = {"type": "state", "id": 2, "state": "closed"}
IDLE_TIMEOUT = 600.0  # no look of the actor's comes within a test


async def stored_state(server: Any, session_id: str) -> str:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    state: str = body["metadata"]["state"]
    return state


async def test_an_idle_redis_ran_is_the_actors_and_the_resume_makes_it_active(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """``idle`` ran, its reply lost: the requester is closed 1011 in doubt, and the
    viewer's connection keeps the actor. The resume's welcome shows the session as the
    store holds it then: active again, as an attach to an idle session makes it
    (before, the actor still held ``active``: the welcome said so while the store kept
    ``idle``, and the attach wrote no activity)."""
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        run_server(store=store, idle_timeout=IDLE_TIMEOUT) as server,
        attach(server, "s", create=True) as (requester, welcome),
        attach(server, "s") as (viewer, _),
    ):
        await load_state_script(redis_server)
        proxy.lose_reply_to(STATE_SCRIPT)
        await requester.send(IDLE)
        code, reason, frames = await read_until_close(requester, SLACK)
        assert (code, reason, frames) == (1011, STATE_IN_DOUBT[1], [])
        assert proxy.lost == 1
        assert await stored_state(server, "s") == "idle"  # Redis ran it
        async with attach(server, "s", last_seq=0, epoch=welcome["epoch"]) as (_, resumed):
            assert resumed["resumed"] is True
            assert resumed["session"]["state"] == await stored_state(server, "s") == "active"
        await viewer.send({"type": "ping", "id": 9})
        assert (await viewer.recv_type("pong"))["id"] == 9  # the viewer was left attached


@contextlib.asynccontextmanager
async def replicated_through_proxy(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> AsyncIterator[tuple[RedisProxy, RedisServer, str]]:
    """A primary with a linked replica, a proxy before the primary, and a store URL
    through it with ``wait_replicas=1``."""
    primary, replica = start_redis("primary"), start_redis("replica")
    admin = redis.asyncio.Redis(port=replica.port, decode_responses=True)
    try:
        await link_replica(admin, primary)
    finally:
        await admin.aclose()
    async with store_through_proxy(primary, prefix_for(tmp_path)) as (proxy, store):
        yield proxy, primary, f"{store}&wait_replicas=1&wait_timeout_ms=5000"


async def test_a_close_that_stands_with_no_notice_ends_the_sessions_other_connections(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``wait_replicas``: the close ran on the primary, its reply (and the ``WAIT``'s)
    lost, and so no notice was ever published. The requester is closed 1011 in doubt;
    the viewer gets ``closed`` and 1000 at once, as from a close acknowledged (before,
    it stayed attached to the closed session until the actor's next look, up to
    ``idle_timeout``, its publishes refused ``closed``); the resume is refused 4409."""
    async with (
        replicated_through_proxy(start_redis, tmp_path) as (proxy, primary, store),
        run_server(store=store, idle_timeout=IDLE_TIMEOUT) as server,
        attach(server, "s", create=True) as (requester, _),
        attach(server, "s") as (viewer, _),
    ):
        await load_state_script(primary)
        proxy.lose_reply_to(STATE_SCRIPT)
        await requester.send(CLOSE)
        code, reason, frames = await read_until_close(requester, SLACK)
        assert (code, reason, frames) == (1011, STATE_IN_DOUBT[1], [])
        assert await stored_state(server, "s") == "closed"
        assert (await viewer.recv_type("closed", timeout=SLACK))["reason"] == "session closed"
        code, _, _ = await read_until_close(viewer, SLACK)
        assert code == 1000
        async with open_peer(server, "s") as again:
            await again.send({"type": "hello", "last_seq": 0})
            code, _, _ = await read_until_close(again, SLACK)
            assert code == 4409
