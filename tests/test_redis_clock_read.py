"""The Redis store's reading of Redis's clock (persistence/redis/clock.py) is taken at
the middle of its round trip: one held up by a busy Redis (a slow script, a fork, a
``CLIENT PAUSE``) was off by half of it, and until the next reading 10 s later the
server's sessions were judged, and made, by a clock that far from Redis's. After a
reading held up 1.5 s, a session the server made was stamped 0.75 s ahead of Redis's
clock: its ``created_at`` came 0.74 s after its first event's ``ts``, and its
``updated_at`` moved back at the attach's write. Such a reading is not taken now; the
last one stands. A real redis-server, a real server on the store."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio

from bamboo_session.persistence import open_storage
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach


async def test_a_reading_of_redis_clock_held_up_by_a_busy_redis_is_not_taken(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        await storage.clock.read()  # the store's reading every 10 s, as Redis is held up
        config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
        async with (
            BambooServer(config, storage) as server,
            attach(server, "s", create=True) as (peer, _),
        ):
            await peer.send({"type": "event", "id": 1, "event": {"type": "token", "content": "x"}})
            assert await peer.recv() == {"type": "ack", "id": 1, "seq": 1}
        metadata = await storage.get_metadata("s")
        assert metadata is not None
        event = (await storage.read_events("s"))[-1]
        assert metadata.created_at <= event.ts  # made before its first event, by Redis's clock
        assert metadata.created_at <= metadata.updated_at
    finally:
        await admin.aclose()
        await storage.close()
