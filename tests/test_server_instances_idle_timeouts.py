"""Two servers on one Redis store with different idle timeouts (A 0.4 s, B 3 s): the
session's stored state settles rather than flips. A's viewer is quiet; B's viewer
pings now and then. Every state write is read off the store itself (Redis MONITOR:
each call of the state script), so a write another write undid is counted too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis

from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.tasks import cancel_and_wait
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server
from tests.test_server_instances import becomes, stored_state

A_IDLE_TIMEOUT = 0.4
B_IDLE_TIMEOUT = 3.0
# A session TTL makes B look every TTL / 3 (1.67 s), so that B looks more than once
# while its viewer's last frame is within B's idle timeout.
TTL = 5


@contextlib.asynccontextmanager
async def state_writes(redis: RedisServer, prefix: str) -> AsyncIterator[list[str]]:
    """The target state of every state-script call on ``prefix``'s keys, as Redis runs
    them, from entry until exit."""
    sha = SCRIPTS["state"].sha
    writes: list[str] = []
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)
    watching = asyncio.Event()

    async def watch() -> None:
        async with client.monitor() as monitor:
            watching.set()
            async for call in monitor.listen():
                # EVALSHA sha numkeys meta id index-prefix target ...
                args = str(call["command"]).split()
                if len(args) > 6 and args[1] == sha and args[3].startswith(prefix):
                    writes.append(args[6])

    task = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(watching.wait(), 10)
        yield writes
    finally:
        await cancel_and_wait(task)
        await client.aclose()


async def test_different_idle_timeouts_leave_the_stored_state_settled(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A's viewer is quiet: A makes the session idle. B's viewer attaches (``active``),
    and A writes ``idle`` 0.4 s later; B's look after it, the hello within B's 3 s,
    writes nothing: A weighed that activity. B's viewer pings: ``active`` at B's next
    look, ``idle`` from A, and nothing after, while B's viewer stays quiet for B's
    timeout. Before, B wrote ``active`` at every look while its viewer's last frame
    was within 3 s, and A ``idle`` after each: 6 writes where 4 are due."""
    prefix = prefix_for(tmp_path)
    url = redis_server.url(prefix=prefix, heartbeat=1)
    async with (
        run_server(store=url, idle_timeout=A_IDLE_TIMEOUT, default_ttl=TTL) as a,
        run_server(store=url, idle_timeout=B_IDLE_TIMEOUT, default_ttl=TTL) as b,
        attach(a, "d", create=True) as (_quiet, _),
    ):
        await becomes(a, "d", "idle")
        async with state_writes(redis_server, prefix) as writes, attach(b, "d") as (viewer, _):
            await asyncio.sleep(1.9)  # B's first look (after TTL / 3) has passed
            assert writes == ["active", "idle"]  # B's attach, then A
            await viewer.request({"type": "ping", "id": 1}, "pong")
            await asyncio.sleep(B_IDLE_TIMEOUT + 0.2)  # B's viewer quiet for B's timeout
            assert writes == ["active", "idle", "active", "idle"]
            assert await stored_state(b, "d") == "idle"
