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

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer

WARNING = "maxmemory-policy"


async def test_evicted_sessions_stay_in_their_users_sum(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """Why the warning: under allkeys-lru, Redis evicts sessions' keys as the user fills
    them; the user's sum keeps their bytes, far past what the user's sessions hold."""
    server = start_redis("evicting")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("maxmemory", "3mb")
        await client.config_set("maxmemory-policy", "allkeys-lru")
        store = await open_storage(server.url(prefix="p"), max_user_bytes=6_000_000)
        try:
            for n in range(150):
                # Evictions under way also break scripts that find half a session.
                with contextlib.suppress(StorageError):
                    await store.create_session(Session.new(f"s{n}", user_id="u"))
                    for _ in range(20):
                        await store.append_event(f"s{n}", AgentEvent.token("x" * 1000))
            held = 0  # what the sessions still there hold (the index may be evicted too)
            for n in range(150):
                meta = await store.get_metadata(f"s{n}")
                held += 0 if meta is None else meta.stored_bytes
            counted = int(await client.hget("p:{idx}:userbytes", "u") or 0)
            assert (await client.info("stats"))["evicted_keys"] > 0
            assert counted > 2 * held  # the evicted sessions' bytes, which nothing frees
        finally:
            await store.close()
    finally:
        await client.aclose()


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
