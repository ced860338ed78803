"""A cancelled watch of a session on a Redis store ends (persistence/redis/cancellation.py):
a task that subscribes to a session (``RedisStorage.subscribe``, as a session's actor
does) and then waits for its events, cancelled at every instant of the subscribe, on a
real redis-server: as it runs, while its pub/sub connection is killed again and again
(``CLIENT KILL TYPE pubsub``), and while Redis is stopped (SIGSTOP).

Before the fix, on Python 3.11, about one watch in thirty cancelled as it subscribed
went on (14 of 400 in the first test): redis-py's send, through ``asyncio.wait_for``,
dropped the cancellation that met its end, and the task subscribed, then waited for
events for ever. Each task here is cancelled once, and must end, cancelled, within
``ENDS_WITHIN``; the ones that ran on are counted and the count must be 0."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import Session
from tests.redis_server import RedisServer, prefix_for

ENDS_WITHIN = 1.0  # seconds a cancelled watch has to end (cancel_and_wait's AGAIN_AFTER)
SESSIONS = 10
TURNS = 40  # loop turns after the watch starts at which it is cancelled: 0 to 39
ROUNDS_KILLED = 400  # watches cancelled while the kills go on (1 or 2 ran on before the fix)


async def watch_for_ever(store: Storage, session_id: str) -> None:
    """What a session's actor does: subscribe, then take the events as they come."""
    subscription = await store.subscribe(session_id, 0)
    try:
        while True:
            await subscription.next_batch()
    finally:
        subscription.close()


async def cancelled_after(store: Storage, session_id: str, turns: int, delay: float) -> bool:
    """Starts a watch, cancels it after ``turns`` turns of the loop and ``delay``
    seconds; whether it ended, cancelled, within ``ENDS_WITHIN``. One still running
    then is cancelled until it ends, so that the next one starts on a calm store."""
    watch = asyncio.create_task(watch_for_ever(store, session_id))
    for _ in range(turns):
        await asyncio.sleep(0)
    if delay:
        await asyncio.sleep(delay)
    if not watch.cancel():
        watch.exception()  # it failed before it was cancelled (Redis away): no hang
        return True
    done, _ = await asyncio.wait({watch}, timeout=ENDS_WITHIN)
    while not watch.done():
        watch.cancel()
        await asyncio.wait({watch}, timeout=ENDS_WITHIN)
    if not watch.cancelled():
        watch.exception()
    return bool(done) and watch.cancelled()


@asynccontextmanager
async def store_with_sessions(server: RedisServer, tmp_path: Path) -> AsyncIterator[Storage]:
    store = await open_storage(server.url(prefix=prefix_for(tmp_path)), cleanup_interval=None)
    try:
        for number in range(SESSIONS):
            await store.create_session(Session.new(f"s{number}"))
        yield store
    finally:
        await store.close()


async def test_a_watch_cancelled_at_any_turn_of_its_subscribe_ends(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    async with store_with_sessions(redis_server, tmp_path) as store:
        ran_on = [
            turns
            for round_ in range(10 * TURNS)
            if not await cancelled_after(store, f"s{round_ % SESSIONS}", round_ % TURNS, 0.0)
            for turns in [round_ % TURNS]
        ]
    assert ran_on == [], f"watches that ran on after their cancellation, by turn: {ran_on}"


async def test_a_watch_cancelled_while_its_connection_is_killed_ends(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("kills")
    draw = random.Random(320)
    admin = redis.asyncio.Redis(port=server.port)
    killing = asyncio.create_task(_kill_pubsub_connections(admin, draw))
    try:
        async with store_with_sessions(server, tmp_path) as store:
            ran_on = 0
            for round_ in range(ROUNDS_KILLED):
                turns, delay = draw.randrange(TURNS), draw.choice((0.0, draw.uniform(0, 0.01)))
                ran_on += not await cancelled_after(store, f"s{round_ % SESSIONS}", turns, delay)
            assert isinstance(store, RedisStorage)
            killed = store.live.listener.reconnects
    finally:
        killing.cancel()
        await asyncio.wait({killing})
        await admin.aclose()
    assert killed >= 10  # the kills did land while watches were cancelled
    assert ran_on == 0, f"{ran_on} of {ROUNDS_KILLED} watches ran on after their cancellation"


async def _kill_pubsub_connections(admin: redis.asyncio.Redis, draw: random.Random) -> None:
    for _ in range(2000):  # bounded: the test cancels it well before
        await asyncio.sleep(draw.uniform(0.005, 0.04))
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")


async def test_a_watch_cancelled_while_redis_is_stopped_ends(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis stopped before or during the watch's subscribe: the cancellation ends it
    at once, not after the socket timeout (10 s) or the confirmation's (10 s). (It
    passed before the fix too: with Redis stopped, a send ends long before its reply,
    and the cancellation lands in the wait for the reply.)"""
    server = start_redis("stopped")
    assert server.pid is not None
    draw = random.Random(3200)
    ran_on = 0
    async with store_with_sessions(server, tmp_path) as store:
        for round_ in range(30):
            session_id = f"s{round_ % SESSIONS}"
            stop_after = draw.choice((0.0, draw.uniform(0, 0.005)))
            loop = asyncio.get_running_loop()
            stopping = loop.call_later(stop_after, os.kill, server.pid, signal.SIGSTOP)
            try:
                ran_on += not await cancelled_after(
                    store, session_id, draw.randrange(TURNS), stop_after + draw.uniform(0, 0.05)
                )
            finally:
                stopping.cancel()
                os.kill(server.pid, signal.SIGCONT)
    assert ran_on == 0, f"{ran_on} of 30 watches ran on after their cancellation"
