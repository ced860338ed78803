"""Sessions of a Redis store whose generation already has a token (a Redis that may
lose writes restarted before they were created): each is served the epoch it was
created with (create.lua stores it with the token), a durable restart keeps it, and
the next lossy restart changes it, on every instance, told or not yet; imported
events reach other instances' subscriptions under it; a session stored by an
earlier version (no token with its epoch) keeps the epoch it was served. Real
redis-servers killed and started again (see tests/test_redis_lossy_epoch.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import MemoryStorage, StorageError, open_storage
from bamboo_session.persistence.redis.scripts import HistoryLost
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_lossy_support import (
    attached,
    both_told_the_epoch_changed,
    crash_and_restart,
    lossy_redis,
    no_old_epoch_from_an_instance_not_yet_told,
    publish,
    resumes_after_the_loss,
    snapshot,
    two_servers,
)
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server

WAIT = 10.0  # seconds: a bound on waiting for a restarted Redis, never a measure


def stores(*servers: BambooServer) -> list[RedisStorage]:
    found = [server.storage for server in servers]
    assert all(isinstance(store, RedisStorage) for store in found)
    return found  # type: ignore[return-value]


async def tokened(server: RedisServer, *held: RedisStorage) -> str:
    """A lossy restart of ``server`` before any session: the generation's record
    (in the snapshot) gets a token, which every store in ``held`` adopts; returns
    once their listeners are back too (a ``hello`` subscribes through them)."""
    await snapshot(server)
    crash_and_restart(server)

    async def adopted() -> bool:
        for store in held:
            try:  # Redis may still be coming back
                await store.generation.check()
            except StorageError:
                return False
        return all(store.generation.token and store.ready for store in held)

    await eventually(adopted, timeout=WAIT)
    assert len({store.generation.token for store in held}) == 1
    return held[0].generation.token


async def test_a_session_created_under_a_token_changes_its_epoch_at_the_next_lossy_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Created under a token, ``s`` is served the epoch its welcome gave, on both
    instances. 10 events, 5 in the snapshot, a lossy restart: viewers are closed
    1012, resumes with that epoch are ``resumed: false`` under one new epoch on both
    instances (not ``resumed: true`` over a log cut short), and seq 6 is taken again
    under it only."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true", heartbeat=1)
    async with two_servers(url) as (a, b):
        await tokened(server, *stores(a, b))
        async with (
            attach(a, "s", create=True, role="agent") as (agent, welcome),
            attach(b, "s", last_seq=0) as (viewer, seen),
        ):
            old = welcome["epoch"]
            assert seen["epoch"] == old and "~" not in old and "." not in old
            assert [await store.epoch("s") for store in stores(a, b)] == [old, old]
            await both_told_the_epoch_changed(server, agent, viewer)
        await resumes_after_the_loss(a, b, old)


async def test_an_instance_not_yet_told_serves_no_epoch_of_a_session_created_under_a_token(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """As test_redis_lossy_epoch's test of an instance not yet told, for a session
    created under a token: the second instance, whose listener is still backing off,
    is asked to resume from the lost seq 6 with the old epoch after the first took
    seq 6 again: ``resumed: false`` and the new epoch."""

    async def under_a_token(server: RedisServer, a: BambooServer, b: BambooServer) -> None:
        await tokened(server, *stores(a, b))

    await no_old_epoch_from_an_instance_not_yet_told(
        lossy_redis(start_redis), tmp_path, under_a_token
    )


async def test_a_session_stored_by_an_earlier_version_keeps_the_epoch_it_was_served(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """An earlier version stored the epoch alone and served it followed by '.' and
    the token: such a session is served that same epoch (a client holding it resumes,
    appends and joins under it), the bare epoch is an earlier generation's; the next
    lossy restart changes it, and appends under the one served before are refused."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    client = redis.asyncio.Redis(port=server.port)
    try:
        async with await open_storage(url) as store:
            assert isinstance(store, RedisStorage)
            token = await tokened(server, store)
            await store.create_session(Session.new("s"))
            bare = await store.epoch("s")
            stored = await client.hget(store.layout.meta("s"), "epoch")
            assert stored == f"{bare}~{token}".encode()  # as this version stores it
            await client.hset(store.layout.meta("s"), "epoch", bare)  # as stored before
            served = f"{bare}.{token}"
            assert await store.epoch("s") == served
            appended = await store.append_events("s", [(AgentEvent.token("a"), None)], epoch=served)
            assert appended[0].seq == 1
            assert [e.seq for e in await store.read_events("s", 0, epoch=served)] == [1]
            await store.presence.join("s", "c_1", "client", epoch=served)
            with pytest.raises(HistoryLost):
                await store.append_events("s", [(AgentEvent.token("b"), None)], epoch=bare)
            await snapshot(server)
            crash_and_restart(server)
            await eventually(lambda: _epoch_changed(store, served), timeout=WAIT)
            with pytest.raises(StorageError, match="epoch changed"):
                await store.append_events("s", [(AgentEvent.token("c"), None)], epoch=served)
    finally:
        await client.aclose()


async def _epoch_changed(store: RedisStorage, old: str) -> bool:
    try:  # Redis may still be coming back
        return await store.epoch("s") != old
    except StorageError:
        return False


async def test_imported_events_reach_a_viewer_on_another_instance_of_a_tokened_store(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``migrate`` imports events into a session of a store whose generation has a
    token: a subscription on another instance (its viewer) is offered them as they
    are imported, as an append's, not left waiting for the next append to show the
    gap. The batch names the epoch as served, which the subscription holds."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with await open_storage(url):
        await snapshot(server)  # with the generation's record
    crash_and_restart(server)  # before the stores open: no listener catches up after it
    source = await MemoryStorage.open()
    importer, other = await open_storage(url), await open_storage(url)
    try:
        assert isinstance(importer, RedisStorage) and isinstance(other, RedisStorage)
        assert importer.generation.token == other.generation.token != ""
        await source.create_session(Session.new("s"))
        await source.append_events(
            "s", [(AgentEvent.token("a"), "k1"), (AgentEvent.token("b"), None)]
        )
        await importer.create_session(Session((await source.load_session("s")).metadata, []))
        watcher = await other.subscribe("s", 0)
        await other.epoch("s")  # the subscription's epoch is known before the import
        await importer.import_events("s", await source.read_events("s"))
        batch = await asyncio.wait_for(watcher.next_batch(), WAIT)
        assert [event.seq for event in batch] == [1, 2]
    finally:
        await importer.close()
        await other.close()
        await source.close()


async def test_a_durable_restart_keeps_the_epoch_of_a_session_created_under_a_token(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A durable Redis (``appendonly yes``, ``appendfsync always``) whose record has a
    token from a lossy past (written here as generation.lua leaves it): ``s``,
    created under it, keeps its epoch across a restart, and a client resuming with
    it is replayed what it missed."""
    server = start_redis("durable")
    url = server.url(prefix=prefix_for(tmp_path))
    async with await open_storage(url):
        pass  # writes the record for this run, its token empty
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.hset(f"{prefix_for(tmp_path)}:{{idx}}:generation", "token", "pastLoss")
    finally:
        await client.aclose()
    async with run_server(store=url) as a:
        assert stores(a)[0].generation.token == "pastLoss"
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert "." not in old and "~" not in old
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
        crash_and_restart(server)
        async with attached(a, "s", last_seq=3, epoch=old) as (viewer, resumed):
            assert (resumed["resumed"], resumed["epoch"], resumed["replay"]) == (True, old, 2)
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(2)] == [4, 5]
        assert stores(a)[0].generation.token == "pastLoss"
