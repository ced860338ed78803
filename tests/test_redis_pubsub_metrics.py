"""``/metrics`` of a server on a real redis-server shows what befell its store's pub/sub
listener: ``bamboo_redis_pubsub_unreadable_total`` counts the messages on sessions'
channels it dropped as unreadable, ``bamboo_redis_pubsub_reconnects_total`` the times
its connection was made again. The listener counted both; /metrics showed neither.
On another store both are there, at 0 (tests/test_protocol_doc.py checks the table)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio

from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server
from tests.test_server_metrics import scrape, value

UNREADABLE = "bamboo_redis_pubsub_unreadable_total"
RECONNECTS = "bamboo_redis_pubsub_reconnects_total"


async def counts(bamboo: BambooServer) -> tuple[float, float]:
    text = await scrape(bamboo)
    return value(text, UNREADABLE), value(text, RECONNECTS)


async def counted(bamboo: BambooServer, expected: tuple[float, float]) -> bool:
    return await counts(bamboo) == expected


async def test_metrics_count_unreadable_messages_and_reconnects(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A viewer follows a session; a plain client of the same Redis publishes a batch
    that is no JSON on the session's channel, twice; then Redis closes the server's
    pub/sub connection (``CLIENT KILL TYPE pubsub``), which the listener makes again."""
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        async with (
            run_server(store=redis_server.url(prefix=prefix_for(tmp_path))) as bamboo,
            attach(bamboo, "s", create=True),
        ):
            store = bamboo.storage
            assert isinstance(store, RedisStorage)
            before = await counts(bamboo)
            publish, channel = store.redis.publish_command, store.layout.channel("s")
            for _ in range(2):
                assert await admin.execute_command(publish, channel, b"[no") == 1
            await eventually(lambda: counted(bamboo, (2, 0)))
            assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
            await eventually(lambda: counted(bamboo, (2, 1)))
            assert await admin.execute_command(publish, channel, b"[no") == 1  # subscribed
            await eventually(lambda: counted(bamboo, (3, 1)))
    finally:
        await admin.aclose()
    assert before == (0, 0)
