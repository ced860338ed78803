"""What ``/readyz`` and ``/metrics`` say of a Redis store's Redis, on real
redis-servers and a real server:

- Redis switched to ``maxmemory-policy allkeys-*`` (it would evict sessions' keys, and
  the events it acknowledged with them): not ready, the reason naming the setting and
  what to set, ``bamboo_store_may_lose_writes 1``, from the look that finds it (or from
  the open); ready again, the gauge 0, once Redis keeps the keys again (``noeviction``).
  ``volatile-*`` keeps every session's key (none has an expiry): ready.
- Redis gone: the reason names Redis's address and the connection's error, not a
  store that is not open."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence.redis.storage import RedisStorage
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import get, run_server
from tests.test_server_metrics import scrape, value

GAUGE = "bamboo_store_may_lose_writes"
WAIT = 10.0  # seconds any wait for the store's looks, or Redis's return, may take


async def set_policy(server: RedisServer, policy: str) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("maxmemory-policy", policy)
    finally:
        await client.aclose()


async def looks_done(storage: RedisStorage, count: int) -> None:
    target = storage.durability.looks + count
    await eventually(lambda: storage.durability.looks >= target, timeout=WAIT)


async def test_an_evicting_policy_set_after_the_open_is_not_ready_until_undone(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("evicting-later")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3)  # a look every 0.1 s
    async with run_server(store=url) as bamboo:
        storage = bamboo.storage
        assert isinstance(storage, RedisStorage)
        assert (await get(bamboo, "/readyz"))[0] == 200
        await set_policy(server, "volatile-lru")
        await looks_done(storage, 2)
        assert (await get(bamboo, "/readyz"))[0] == 200
        assert value(await scrape(bamboo), GAUGE) == 0
        await set_policy(server, "allkeys-lru")
        await looks_done(storage, 2)
        status, reason = await get(bamboo, "/readyz")
        assert status == 503
        assert "maxmemory-policy allkeys-lru" in reason and "noeviction" in reason, reason
        assert value(await scrape(bamboo), GAUGE) == 1
        await set_policy(server, "noeviction")
        await looks_done(storage, 2)
        assert (await get(bamboo, "/readyz"))[0] == 200
        assert value(await scrape(bamboo), GAUGE) == 0


async def test_a_store_opened_on_an_evicting_redis_is_not_ready(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("evicting-at-open")
    await set_policy(server, "allkeys-random")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        status, reason = await get(bamboo, "/readyz")
        assert value(await scrape(bamboo), GAUGE) == 1
    assert status == 503 and "maxmemory-policy allkeys-random" in reason, (status, reason)


async def test_readiness_with_redis_refusing_connections_names_its_address(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("refusing")
    async with run_server(store=server.url(prefix=prefix_for(tmp_path))) as bamboo:
        assert (await get(bamboo, "/readyz"))[0] == 200
        server.stop(signal.SIGKILL)
        reasons: list[str] = []

        async def refused() -> bool:  # the listener's reconnects fail from then on
            status, reason = await get(bamboo, "/readyz")
            reasons.append(reason)
            return status == 503 and "Error 111 connecting" in reason

        await eventually(refused, timeout=WAIT)
        await server.start_in_loop()

        async def ready() -> bool:
            return (await get(bamboo, "/readyz"))[0] == 200

        await eventually(ready, timeout=WAIT)
    assert f"Redis at 127.0.0.1:{server.port}" in reasons[-1], reasons
