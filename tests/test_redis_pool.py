"""A restart of Redis closes every connection the store pooled, on real redis-servers:
writes right after the restart all succeed, each on a connection made again, where
each pooled connection used to fail its first call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import redis.asyncio

from bamboo_session.persistence.redis.client import connect
from bamboo_session.persistence.redis.config import RedisConfig
from tests.redis_server import RedisServer

BURST = 6  # connections pooled before the restart, and calls of each kind after it


async def redis_clients(server: RedisServer) -> int:
    """The connections Redis holds, this one's included."""
    admin = redis.asyncio.Redis(port=server.port)
    try:
        return int((await admin.info("clients"))["connected_clients"])
    finally:
        await admin.aclose()


async def test_idle_connections_redis_closed_are_made_again_before_writes(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """The store's client (client.py ``connect``), ``BURST`` connections pooled and
    idle, Redis restarted: ``BURST`` writes at once each go on a connection made
    again, and none fails. With redis-py 8.1's maintenance notifications on, its pool
    handed each out closed, and every one failed (redis-py issue #4252)."""
    server = start_redis("restarted")
    client = connect(RedisConfig(url=server.url()))
    try:
        await asyncio.gather(*(client.execute_command("PING") for _ in range(BURST)))
        assert await redis_clients(server) >= BURST + 1
        server.stop()
        await server.start_in_loop()
        counts = await asyncio.gather(
            *(client.execute_command("INCR", "n") for _ in range(BURST)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert sorted(counts) == list(range(1, BURST + 1)), counts
