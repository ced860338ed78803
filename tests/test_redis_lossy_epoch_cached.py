"""A restart of a Redis that may lose writes, on a Redis that comes back with its
script cache (Redis before 7.0 keeps the scripts in an RDB saved with replication
information: a primary that ever had a replica): no NOSCRIPT tells the store of the
restart. Simulated on the Redis here by loading every script right after the
restart, before the store's first call (real redis-servers, killed and started
again; see tests/test_redis_lossy_epoch.py)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_lossy_support import lossy_redis, snapshot
from tests.redis_server import RedisServer, prefix_for


async def load_every_script(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        for script in SCRIPTS.values():
            assert await client.script_load(script.source) == script.sha
    finally:
        await client.aclose()


async def test_no_append_under_the_old_epoch_when_the_scripts_survived_the_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """10 events, 5 in the snapshot; Redis killed, down long enough for the listener
    to wait between attempts, then back with its scripts. An append that names the
    epoch served before the restart (an actor not yet told) is refused; the session
    is served under a new epoch, and its next event, seq 6, is of that epoch only."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with await open_storage(url) as store:
        await store.create_session(Session.new("s"))
        for i in range(5):
            await store.append_event("s", AgentEvent.token(f"kept {i}"))
        await snapshot(server)
        for i in range(5, 10):
            await store.append_event("s", AgentEvent.token(f"lost {i}"))
        old = await store.epoch("s")
        server.stop(signal.SIGKILL)
        await asyncio.sleep(1.5)  # setup, not a measure: the listener backs off
        server.start()
        await load_every_script(server)
        stale = [(AgentEvent.token("stale"), None)]
        for _ in range(3):  # Redis may still be coming back
            try:
                taken = await store.append_events("s", stale, epoch=old)
            except StorageError as exc:
                if "epoch changed" in str(exc):
                    break
            else:
                pytest.fail(f"seq {taken[0].seq} taken under the old epoch after the restart")
        else:
            pytest.fail("no answer from the restarted Redis")
        new = await store.epoch("s")
        assert new != old
        events = await store.read_events("s", 0, epoch=new)
        assert [event.seq for event in events] == [1, 2, 3, 4, 5]
