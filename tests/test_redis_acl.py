"""A Redis store whose user an ACL refuses INFO (and CONFIG), on a real redis-server
with a real ACL user: the store reads Redis's version from HELLO and opens on a
durable Redis; it cannot see a restart without INFO's ``run_id``, so a writable store
is refused, with the reason, on a Redis that may lose writes, and a durable one that
turns lossy later is said once in a warning (not at every look), the gauge says 1,
and the store keeps serving."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, StoreMisconfigured, open_storage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.persistence.redis.versions import server_version
from bamboo_session.protocol.models import AgentEvent, Session
from tests.instances import eventually
from tests.redis_lossy_support import (
    attached,
    crash_and_restart,
    lossy_redis,
    snapshot,
    ten_events_five_in_the_snapshot,
)
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server
from tests.test_redis_lossy_epoch_tokened import stores

REFUSED = "refuses INFO"
WAIT = 20.0  # seconds: a bound on waiting for looks, never a measure


async def acl_user(server: RedisServer, tmp_path: Path, *denied: str, **params: object) -> str:
    """A store URL for a user allowed every command but ``denied``."""
    admin = redis.asyncio.Redis(port=server.port)
    try:
        rules = ["on", ">pw", "~*", "&*", "+@all", *denied]
        await admin.execute_command("ACL", "SETUSER", "bamboo", *rules)
    finally:
        await admin.aclose()
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=0.3, **params)
    return url.replace("redis://", "redis://bamboo:pw@", 1)


async def config_set(server: RedisServer, name: str, value: str) -> None:
    admin = redis.asyncio.Redis(port=server.port)
    try:
        await admin.config_set(name, value)
    finally:
        await admin.aclose()


async def test_a_durable_redis_that_refuses_info_opens_and_warns_once_when_it_turns_lossy(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis("durable")
    url = await acl_user(server, tmp_path, "-info")
    caplog.set_level(logging.INFO, logger="bamboo_session")
    async with await open_storage(url) as store:
        assert isinstance(store, RedisStorage) and not store.may_lose_writes
        await store.create_session(Session.new("s"))
        assert (await store.append_event("s", AgentEvent.token("a"))).seq == 1
        await config_set(server, "appendfsync", "everysec")
        await eventually(lambda: store.durability.turns == 1, timeout=WAIT)
        looks = store.durability.looks
        await eventually(lambda: store.durability.looks >= looks + 5, timeout=WAIT)
        assert store.may_lose_writes
        warned = [r for r in caplog.records if REFUSED in r.getMessage()]
        assert [r.levelno for r in warned] == [logging.WARNING]
        assert "its next restart may lose writes it acknowledged" in warned[0].getMessage()
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert (await store.append_event("s", AgentEvent.token("b"))).seq == 2


@pytest.mark.parametrize("denied", [("-info",), ("-info", "-config")])
async def test_a_writable_store_on_a_lossy_redis_that_refuses_info_is_refused(
    denied: tuple[str, ...], start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = lossy_redis(start_redis)
    url = await acl_user(server, tmp_path, *denied, accept_lossy="true")
    with pytest.raises(StoreMisconfigured, match="Allow INFO"):
        await open_storage(url)
    async with await open_storage(url, read_only=True) as reader:  # writes nothing
        assert await reader.get_metadata("s") is None


async def test_a_store_that_is_refused_info_serves_the_epochs_the_record_says(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A lossy restart gave the store's generation a token, so session ``s`` is served
    under a changed epoch. A store whose user is refused INFO has no run to compare,
    but serves that same epoch: read-only (``migrate``'s source, ``show``), and
    writable once Redis is made durable; an append under it is taken."""
    server = lossy_redis(start_redis)
    full = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with await open_storage(full) as store:
        await store.create_session(Session.new("s"))
        created = await store.epoch("s")
        await snapshot(server)
        crash_and_restart(server)
        await eventually(lambda: _epoch_changed(store, created), timeout=WAIT)
        served = await store.epoch("s")
    url = await acl_user(server, tmp_path, "-info")
    async with await open_storage(url, read_only=True) as reader:
        assert await reader.epoch("s") == served
    await config_set(server, "appendonly", "yes")
    await config_set(server, "appendfsync", "always")
    async with await open_storage(url) as writer:
        assert not writer.may_lose_writes
        assert await writer.epoch("s") == served
        appended = await writer.append_events("s", [(AgentEvent.token("a"), None)], epoch=served)
        assert appended[0].seq == 1


async def _epoch_changed(store: object, old: str) -> bool:
    assert isinstance(store, RedisStorage)
    try:  # Redis may still be coming back
        return await store.epoch("s") != old
    except StorageError:
        return False


async def test_an_instance_refused_info_resumes_nothing_under_an_epoch_a_restart_changed(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Instance ``b``'s user is refused INFO (opened on a durable Redis), ``a``'s is
    not. Redis turns lossy, ``a`` records it; 10 events, 5 in the snapshot, Redis
    killed and started again. ``a`` changes the epoch; a client resuming on ``b``
    with the old epoch from the lost seq 10 is told ``resumed: false``, never
    ``resumed: true`` over the log cut short."""
    server = lossy_redis(start_redis)
    await config_set(server, "appendonly", "yes")
    await config_set(server, "appendfsync", "always")
    refused = await acl_user(server, tmp_path, "-info")
    full = server.url(prefix=prefix_for(tmp_path), accept_lossy="true", heartbeat=0.3)
    async with run_server(store=full) as a, run_server(store=refused) as b:
        await config_set(server, "appendfsync", "everysec")
        for store in stores(a, b):
            await eventually(lambda s=store: s.durability.turns == 1, timeout=WAIT)
        async with (
            attach(a, "s", create=True, role="agent") as (agent, welcome),
            attach(b, "s", last_seq=0) as (viewer, _),
        ):
            old = welcome["epoch"]
            await ten_events_five_in_the_snapshot(server, agent, viewer)
        await config_set(server, "appendonly", "no")  # what the restart comes back with
        crash_and_restart(server)
        await acl_user(server, tmp_path, "-info")  # ACLs set at run time die with Redis
        await eventually(lambda: _epoch_changed(stores(a)[0], old), timeout=WAIT)
        async with attached(b, "s", last_seq=10, epoch=old) as (_, resumed):
            assert (resumed["resumed"], resumed["last_seq"]) == (False, 5)
            assert resumed["epoch"] != old


@pytest.mark.parametrize("protocol", [2, 3])
async def test_the_version_comes_from_hello_in_either_protocol(
    protocol: int, start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """HELLO answers a flat list in RESP2 (redis-py before 8 speaks it by default),
    a map in RESP3: either gives the version when INFO is refused."""
    server = start_redis("durable")
    await acl_user(server, tmp_path, "-info")
    client = redis.asyncio.Redis(
        port=server.port, username="bamboo", password="pw", protocol=protocol
    )
    try:
        info = redis.asyncio.Redis(port=server.port)
        expected = (await info.info("server"))["redis_version"]
        await info.aclose()
        major, minor = expected.split(".")[:2]
        assert await server_version(client) == (int(major), int(minor))
    finally:
        await client.aclose()
