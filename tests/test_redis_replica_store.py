"""A Redis store opened for writing on a replica is refused at its open (a read-only
replica would fail every write after a server said it was listening; a writable one
keeps writes its primary never sees, which its next sync drops), and opened for
reading (``migrate`` from a replica). Real redis-servers, one replicating the other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio

from bamboo_session.persistence import StoreMisconfigured, open_storage
from tests.redis_server import RedisServer


@pytest.mark.parametrize("replica_read_only", ["yes", "no"])
async def test_a_writable_store_on_a_replica_is_refused_and_a_read_only_one_opens(
    start_redis: Callable[[str], RedisServer], replica_read_only: str
) -> None:
    primary, replica = start_redis("primary"), start_redis("replica")
    client = redis.asyncio.Redis(port=replica.port)
    try:
        await client.config_set("replica-read-only", replica_read_only)
        await client.replicaof("127.0.0.1", primary.port)
        for _ in range(200):  # the link is up once the first sync is done
            if (await client.info("replication")).get("master_link_status") == "up":
                break
            await asyncio.sleep(0.05)
        with pytest.raises(StoreMisconfigured) as refused:
            await open_storage(replica.url(prefix="r"))
        reader = await open_storage(replica.url(prefix="r"), read_only=True)
        await reader.close()
    finally:
        await client.aclose()
    message = str(refused.value)
    assert message.startswith(f"Redis is a replica of 127.0.0.1:{primary.port}"), message
    assert "point the store URL at the primary" in message
