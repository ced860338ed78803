"""What the Redis backend's tests beyond the contract suite share
(tests/test_redis_storage_*.py): ``url``, a fixture that makes the URL of a keyspace of
the test's own on the suite's redis-server, and ``collect``, the seqs a subscription
yields."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import Subscription
from tests.redis_server import RedisServer, prefix_for

RECV = 5.0


@pytest.fixture(name="url")
def url_fixture(redis_server: RedisServer, tmp_path: Path) -> Callable[..., str]:
    """The URL of a keyspace of this test's own, with options."""

    def make(**params: object) -> str:
        return redis_server.url(prefix=prefix_for(tmp_path), **params)

    return make


async def collect(subscription: Subscription, count: int, *, at_hand: bool = False) -> list[int]:
    """``count`` events' seqs; with ``at_hand``, as the actor takes them: what
    ``take_buffered`` has first, else ``next_batch``."""
    seqs: list[int] = []
    while len(seqs) < count:
        batch = subscription.take_buffered() if at_hand else []
        batch = batch or await asyncio.wait_for(subscription.next_batch(), RECV)
        assert batch, f"subscription ended ({subscription.ended}) after {seqs[-3:]}"
        seqs.extend(event.seq for event in batch)
    return seqs
