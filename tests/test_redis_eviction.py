"""A Redis store opened on a redis-server that may evict any key at its maxmemory
(``maxmemory-policy allkeys-*``) says so in a warning: Redis would drop sessions' keys
and leave their bytes in their users' sums (``userbytes``), which no delete or cleanup
then frees, so a user could be refused ``too_large`` for good. ``noeviction`` (Redis's
default) and the ``volatile-*`` policies (the store sets no expiry on a session's keys)
open quietly. The first test shows the harm on a real redis-server."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import Storage, StorageError, open_storage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer

WARNING = "maxmemory-policy"
USER_SUM = "p:{idx}:userbytes"  # the hash of users' sums, under the store's prefix


async def test_evicted_sessions_stay_in_their_users_sum(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """Why the warning: under allkeys-lru, Redis evicts sessions' keys as the user fills
    them; the user's sum keeps the bytes of sessions gone whole, which nothing frees.
    (LRU is sampled: now and then Redis evicts the sum itself, which then counts only
    the appends after it; wrong the other way, and as lasting.)"""
    server = start_redis("evicting")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("maxmemory", "3mb")
        await client.config_set("maxmemory-policy", "allkeys-lru")
        store = await open_storage(server.url(prefix="p"), max_user_bytes=50_000_000)
        try:
            per_event = await _bytes_per_event(store)  # before any eviction
            acked: dict[str, int] = {}  # session -> its acknowledged appends
            gone: list[str] = []
            sums: list[int] = []  # the user's sum after each ten sessions: it only grows
            for n in range(600):  # until enough sessions are gone whole (about 150 made)
                session_id = f"s{n}"
                # Evictions under way also break scripts that find half a session.
                with contextlib.suppress(StorageError):
                    await store.create_session(Session.new(session_id, user_id="u"))
                    for _ in range(20):
                        await store.append_event(session_id, AgentEvent.token("x" * 1000))
                        acked[session_id] = acked.get(session_id, 0) + 1
                if n % 10 == 9:
                    sums.append(int(await client.hget(USER_SUM, "u") or 0))
                    gone = [s for s in acked if await store.get_metadata(s) is None]
                    if len(gone) >= 10:
                        break
            assert len(gone) >= 10, gone
            held = 0  # what the sessions still there hold (the index may be evicted too)
            for session_id in acked:
                meta = await store.get_metadata(session_id)
                held += 0 if meta is None else meta.stored_bytes
            gone_bytes = sum(acked[s] for s in gone) * per_event
            counted = int(await client.hget(USER_SUM, "u") or 0)
            assert gone_bytes >= 10 * per_event
            sums.append(counted)
            if sums == sorted(sums):  # the sum itself was not evicted
                assert counted >= held + gone_bytes  # the gone sessions' bytes, never freed
            assert counted != held  # either way, not what the user's sessions hold
        finally:
            await store.close()
    finally:
        await client.aclose()


async def _bytes_per_event(store: Storage) -> int:
    """What one of the test's appends adds to a session's stored_bytes."""
    await store.create_session(Session.new("measure"))
    await store.append_event("measure", AgentEvent.token("x" * 1000))
    meta = await store.get_metadata("measure")
    assert meta is not None
    return meta.stored_bytes


@pytest.mark.parametrize(
    ("policy", "warned"),
    [
        ("allkeys-lru", True),
        ("allkeys-random", True),
        ("noeviction", False),
        ("volatile-lru", False),
    ],
)
async def test_a_policy_that_evicts_any_key_is_warned_of(
    start_redis: Callable[[str], RedisServer],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    policy: str,
    warned: bool,
) -> None:
    server = start_redis("policy")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("maxmemory-policy", policy)
        with caplog.at_level(logging.WARNING):
            store = await open_storage(server.url(prefix="p"))
            await store.close()
    finally:
        await client.aclose()
    said = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert bool(said) == warned, said
    if warned:
        assert policy in said[0] and "noeviction" in said[0]
