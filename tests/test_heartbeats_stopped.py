"""Stopping the presence and per-user connection heartbeats on a real Redis store
(server/presence.py, server/user_connections.py), at random instants: each stop ends,
within a bound, however it lands. Their refreshes go through redis-py, which on Python
3.11 drops a cancellation that meets the end of a send (bamboo_session/tasks.py): a
heartbeat stopped with one cancellation then went on beating, and the server's stop
waited on it for ever (before dad952c, each of these tests hung until pytest-timeout)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Session
from bamboo_session.server.pages import PageReads
from bamboo_session.server.presence import SharedPresence
from bamboo_session.server.user_connections import SharedUserConnections
from bamboo_session.tasks import AGAIN_AFTER
from tests.redis_server import RedisServer, prefix_for

STOPS = 60
MAX_STOPS = 10 * STOPS  # on a loaded machine fewer beats fit between a start and its stop
HEARTBEAT = 0.006  # a refresh every 2 ms: a stop nearly always meets one in Redis
STOP_BOUND = 5.0  # seconds a stop may take


@pytest.fixture(name="store")
async def store_fixture(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    store = await open_storage(url, cleanup_interval=None)
    assert isinstance(store, RedisStorage)
    try:
        yield store
    finally:
        await store.close()


async def test_a_presence_heartbeat_stop_ends_wherever_it_lands(store: RedisStorage) -> None:
    await store.create_session(Session.new("s1"))
    presence = SharedPresence(store.presence, lambda _notice: None)
    await presence.join("s1", "c1", "agent")  # something held: each beat is a refresh
    rng = random.Random(305)
    slow = stops = 0
    while stops < STOPS or (presence.refreshes <= STOPS and stops < MAX_STOPS):
        presence.start()
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        slow += await _timed(presence.stop(), STOP_BOUND)
        stops += 1
    assert presence.refreshes > STOPS  # the stops did meet refreshes under way
    print(f"{slow} of {stops} presence stops took a second cancellation")


async def test_a_user_connections_heartbeat_stop_ends_wherever_it_lands(
    store: RedisStorage,
) -> None:
    counts = SharedUserConnections(store.user_connections, limit=10)
    reads = PageReads(slots=2, timeout=5.0)
    rng = random.Random(305)
    slow = stops = 0
    while stops < STOPS or (counts.refreshes <= STOPS and stops < MAX_STOPS):
        counts.start()
        await counts.acquire("u", f"c{stops}", reads, reads.deadline())  # one held
        await asyncio.sleep(rng.uniform(0.001, 0.02))
        slow += await _timed(counts.stop(grace=1.0), STOP_BOUND + 1.0)  # 1 s for releases
        stops += 1
    assert counts.refreshes > STOPS
    print(f"{slow} of {stops} user-connection stops took a second cancellation")


async def _timed(stop: Awaitable[None], bound: float) -> bool:
    """Awaits ``stop``, failing past ``bound``; whether it took as long as a second
    cancellation comes after (most likely it needed one)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(bound):  # a stop that hangs fails here
        await stop
    return loop.time() - began >= AGAIN_AFTER
