"""A live subscription whose store no longer holds events it said it had: a Redis
session whose log is gone while its metadata stays (deleted by hand here, as an
``allkeys-*`` maxmemory policy evicts it) ends ``events lost`` at its read behind,
rather than wait for an offer that may never come (persistence/feed.py). The local
stores cannot come to it: they read what their own metadata counts, and a deleted
session ends its subscriptions as ``deleted``. A real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence.feed import EVENTS_LOST
from bamboo_session.persistence.redis.layout import Layout
from tests.redis_server import RedisServer, prefix_for
from tests.storage_contract_support import new_session, tokens
from tests.support import opened

RECV = 5.0


async def test_a_subscription_behind_a_lost_log_ends_rather_than_waits(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = prefix_for(tmp_path)
    async with opened(redis_server.url(prefix=prefix)) as store:
        await new_session(store)
        await store.append_events("s1", tokens("a", "b", "c"))
        raw = redis.asyncio.Redis(port=redis_server.port)
        try:
            assert await raw.delete(Layout(prefix).log("s1")) == 1
        finally:
            await raw.aclose()
        subscription = await store.subscribe("s1", after_seq=1)  # its metadata says 3
        assert subscription.ready()
        assert await asyncio.wait_for(subscription.next_batch(), RECV) == []
        assert (subscription.ended, subscription.position) == (EVENTS_LOST, 1)
        assert [event async for event in subscription] == []
