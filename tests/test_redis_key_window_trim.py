"""A Redis session that goes on appending without idempotency keys drops the keys
that fell out of the window (the last 10,000 appends) within a tenth of the window
more, as one that appends with keys does at each append: before, only an append with
a key trimmed the window, and a session that went on without keys kept its last keys
for ever. A key still within the window is still a duplicate. Real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.base import KEY_WINDOW
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer, redis_store

BATCH = 500  # appends per store call: the test makes some 12,000


@pytest.fixture(name="storage")
async def storage_fixture(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    async with redis_store(redis_server, tmp_path) as storage:
        yield storage


async def append_up_to(storage: RedisStorage, last: int, key_prefix: str | None = None) -> None:
    """Appends to session ``s`` until its last seq is ``last``, each keyed with
    ``key_prefix`` and its seq if given."""
    seq = await storage.last_seq("s")
    while seq < last:
        count = min(BATCH, last - seq)
        keys = [None if key_prefix is None else f"{key_prefix}{seq + n + 1}" for n in range(count)]
        appended = await storage.append_events("s", [(AgentEvent.token("x"), k) for k in keys])
        assert not any(done.duplicate for done in appended)
        seq = appended[-1].seq


async def test_keys_past_the_window_go_though_no_append_has_a_key(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    await storage.create_session(Session.new("s", now=storage.now()))
    await append_up_to(storage, 200, key_prefix="early-")
    await append_up_to(storage, 4_999)
    late = await storage.append_events("s", [(AgentEvent.token("late"), "late")])
    assert late[0].seq == 5_000
    admin = redis.asyncio.Redis(port=redis_server.port)
    window = storage.layout.session_keys("s")[2]
    try:
        assert await admin.zcard(window) == 201
        last = 200 + KEY_WINDOW + KEY_WINDOW // 10  # the early keys out, and a step more
        await append_up_to(storage, last)
        assert await admin.zrange(window, 0, -1) == [b"late"]
    finally:
        await admin.aclose()
    again = await storage.append_events("s", [(AgentEvent.token("late"), "late")])
    assert (again[0].seq, again[0].duplicate) == (5_000, True)  # within the window still
    anew = await storage.append_events("s", [(AgentEvent.token("early"), "early-1")])
    assert (anew[0].seq, anew[0].duplicate) == (last + 1, False)  # out of it, as before


async def test_keyless_appends_that_trim_are_stored_whole_over_a_window_of_another_type(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """The trim of a keyless append is made only on a window that is a sorted set: one
    written over from outside fails no keyless append, at the step or not."""
    await storage.create_session(Session.new("s", now=storage.now()))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.set(storage.layout.session_keys("s")[2], "not a sorted set")
        await append_up_to(storage, 2 * (KEY_WINDOW // 10) + 1)  # two steps crossed
        assert await admin.hget(storage.layout.meta("s"), "seq") == b"2001"
        assert await admin.get(storage.layout.session_keys("s")[2]) == b"not a sorted set"
    finally:
        await admin.aclose()
    assert len(await storage.read_events("s", 0, limit=3_000)) == 2_001
