"""The Redis backend's options and durability: a redis-server restart loses nothing
acknowledged; URL options are checked; a pool paces calls beyond its connections; an
unreachable server is a clear error; WAIT for a real replica, and without one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
import redis.asyncio

from bamboo_session.persistence import Appended, StorageError, open_storage
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.protocol.models import AgentEvent, Session, SessionState, StoredEvent
from tests.redis_server import RedisServer, link_replica, prefix_for
from tests.redis_storage_support import (
    RECV,
    collect,
    url_fixture,  # noqa: F401 (a fixture)
)

# -- a redis-server restart --------------------------------------------------------------------


async def test_a_redis_restart_loses_nothing_acknowledged(
    start_redis: Callable[[str], RedisServer],
) -> None:
    server = start_redis("own-redis")
    store = await open_storage(server.url(prefix="restart"))
    try:
        await store.create_session(Session.new("s1"))
        subscription = await store.subscribe("s1", 0)
        for i in range(20):
            await store.append_event("s1", AgentEvent.token(f"t{i}"), f"k{i}")
        server.stop(signal.SIGKILL)
        with pytest.raises(StorageError, match="redis unavailable"):
            await store.append_event("s1", AgentEvent.token("lost"))
        server.start()
        appended = None
        for _ in range(100):  # service returns by itself
            try:
                appended = await store.append_event("s1", AgentEvent.token("after"), "k-after")
                break
            except StorageError:
                await asyncio.sleep(0.05)
        assert appended is not None and appended.seq == 21
        assert await store.append_event("s1", AgentEvent.token("t3"), "k3") == Appended(4, True)
        events = await store.read_events("s1")
        assert [e.seq for e in events] == list(range(1, 22))
        assert await collect(subscription, 21) == list(range(1, 22))
        for _ in range(100):
            if store.ready:
                break
            await asyncio.sleep(0.05)
        assert store.ready
    finally:
        await store.close()


# -- options and durability --------------------------------------------------------------------


async def test_url_options_are_checked(url: Callable[..., str]) -> None:
    with pytest.raises(ValueError, match="unknown option 'nope'"):
        await open_storage(url(nope=1))
    with pytest.raises(ValueError, match="prefix"):
        await open_storage(url().replace("prefix=t", "prefix={t"))
    with pytest.raises(ValueError, match="wait_replicas"):
        await open_storage(url(wait_replicas="two"))
    with pytest.raises(ValueError, match="pubsub"):
        await open_storage(url(pubsub="loud"))


async def test_more_calls_at_once_than_connections_wait_for_one(
    url: Callable[..., str],
) -> None:
    """A burst of calls beyond ``max_connections`` is paced by the pool, not failed
    (redis-py's own pool refuses the 101st with "Too many connections")."""
    store = await open_storage(url(max_connections=4))
    try:
        names = [f"b{i}" for i in range(300)]
        await asyncio.gather(*(store.create_session(Session.new(name)) for name in names))
        found = await asyncio.gather(*(store.get_metadata(name) for name in names))
        assert [metadata.id for metadata in found if metadata is not None] == names
    finally:
        await store.close()


async def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # a free port nobody listens on
    with pytest.raises(StorageError, match="redis unavailable"):
        await open_storage(server.url(prefix="nobody"))


async def test_wait_replicas_acknowledges_once_a_replica_has_it(
    redis_server: RedisServer, start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    replica = start_redis("replica")
    admin = redis.asyncio.Redis(port=replica.port)
    try:
        await link_replica(admin, redis_server)
        prefix = prefix_for(tmp_path)
        store = await open_storage(redis_server.url(prefix=prefix, wait_replicas=1))
        watcher = await open_storage(redis_server.url(prefix=prefix))
        try:
            await store.create_session(Session.new("s1"))
            subscription = await watcher.subscribe("s1", 0)
            assert await store.append_event("s1", AgentEvent.token("a"), "k") == Appended(1)
            assert await collect(subscription, 1) == [1]  # published after the WAIT
            copy = await admin.execute_command("XLEN", f"{prefix}:{{s1}}:log")
            assert copy == 1
            # An import (migrate) too: the watcher, another instance, gets it at once.
            imported = StoredEvent(2, datetime.now(UTC), AgentEvent.token("b"))
            await cast(SessionImport, store).import_events("s1", [imported])
            assert await collect(subscription, 1) == [2]
            await store.update_session_state("s1", SessionState.CLOSED)
            assert await asyncio.wait_for(subscription.next_batch(), RECV) == []
        finally:
            await store.close()
            await watcher.close()
    finally:
        await admin.aclose()


async def test_wait_replicas_without_replicas_is_an_error(url: Callable[..., str]) -> None:
    store = await open_storage(url(wait_replicas=1, wait_timeout_ms=50))
    try:
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            await store.create_session(Session.new("s1"))
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            await store.append_event("s1", AgentEvent.token("a"), "k")
        # Not acknowledged, yet on the primary (a retry with its key is a duplicate).
        assert await store.last_seq("s1") == 1
    finally:
        await store.close()
