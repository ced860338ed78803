"""A reading of Redis's clock held up past the point where the last one is stale
(Redis paused longer than ``READ_EVERY`` + ``STALE``: a ``DEBUG SLEEP``, a ``CLIENT
PAUSE``, a fork on a big dataset) is taken, since the last one carries nothing; taken
at the middle of its round trip, it set the store's clock ahead of Redis's by half of
it (2.5 s after a pause of 5 s), and a session Redis held alive, made with a TTL of 2 s
just then, was refused 4404 ``session expired`` at its attach (the test judges it as the
server's HTTP read and attach do, with no server's start in between: a TTL that short
would be a load-sensitive test). Such a reading is now taken as though Redis answered
at the end of the round trip: late by up to the round trip, never early
(persistence/redis/clock.py). A real redis-server of the test's own (it is paused)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session
from tests.redis_server import RedisServer, prefix_for

PAUSE_MS = 8000  # past the seam's interval (0.5 s) + STALE (3 s): the reading held is stale
TTL = 3  # seconds: under the 4 s the reading at the middle of that pause put the clock ahead


async def redis_time(admin: redis.asyncio.Redis) -> datetime:
    seconds, micros = await admin.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


async def test_a_reading_held_up_past_a_stale_one_puts_the_clock_no_ahead_of_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis_server = start_redis("paused")
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        storage.clock.interval = 0.5  # the seam: stale after 3.5 s, not 13 s
        await admin.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        await storage.clock.read()  # held up 5 s; the reading it follows is stale by then
        assert storage.now() <= await redis_time(admin) + timedelta(milliseconds=5)
        await storage.create_session(Session.new("s", ttl=TTL, now=storage.now()))
        metadata = await storage.get_metadata("s")  # stamped by Redis's TIME (create.lua)
        assert metadata is not None
        assert not metadata.is_expired(storage.now())  # as the server's HTTP read judges it
    finally:
        await admin.aclose()
        await asyncio.shield(storage.close())
