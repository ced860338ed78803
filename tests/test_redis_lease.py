"""The fenced lease (persistence/redis/lease.py) on a real Redis: one holder at a time,
renewal and release only by the holder's token, a stalled holder fenced off after
its lease passed to another, and two stores whose cleanup loops never hold the lease
together (checked on the lease's own log of grants, renewals and releases)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import SessionFilter, open_storage
from bamboo_session.persistence.redis import RedisStorage, maintenance
from bamboo_session.persistence.redis.lease import Lease, LeaseRecord
from bamboo_session.persistence.redis.maintenance import DELETES_AT_ONCE
from bamboo_session.persistence.redis.scripts import Fenced
from bamboo_session.protocol.models import Session, SessionState
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    connection = redis.asyncio.Redis(port=redis_server.port)
    try:
        yield connection
    finally:
        await connection.aclose()


def check_never_held_twice(records: list[LeaseRecord]) -> None:
    """Replay a lease's log: a grant only once the previous holder released it or let
    it expire; a renewal or release only by the current holder, before its expiry."""
    holder: str | None = None
    expires_at = 0
    for record in records:
        if record.op == "grant":
            assert holder is None or record.at_ms >= expires_at, (record, holder, expires_at)
            holder, expires_at = record.token, record.at_ms + record.ttl_ms
        elif record.op == "renew":
            assert record.token == holder and record.at_ms <= expires_at, record
            expires_at = record.at_ms + record.ttl_ms
        else:
            assert record.op == "release" and record.token == holder, record
            holder = None


async def test_one_holder_at_a_time(client: redis.asyncio.Redis, tmp_path: Path) -> None:
    key = f"{prefix_for(tmp_path)}:{{lease:job}}"
    a, b = Lease(client, key, "a", ttl=5), Lease(client, key, "b", ttl=5)
    assert await a.acquire()
    first = a.fence
    assert a.held and first is not None
    assert not await b.acquire()
    assert await a.renew()
    assert not await b.keep()
    assert await a.release()
    assert not a.held
    assert await b.acquire()
    assert b.fence is not None and b.fence > first
    records = await b.records()
    assert [r.op for r in records] == ["grant", "renew", "release", "grant"]
    check_never_held_twice(records)


async def test_a_stalled_holder_is_fenced_off(
    client: redis.asyncio.Redis, redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = prefix_for(tmp_path)
    store = await open_storage(redis_server.url(prefix=prefix))
    assert isinstance(store, RedisStorage)
    try:
        await store.create_session(Session.new("old", ttl=1))
        await asyncio.sleep(1.05)
        key = store.layout.lease("cleanup")
        stalled, fresh = Lease(client, key, "stalled", ttl=0.2), Lease(client, key, "fresh", ttl=5)
        assert await stalled.acquire()
        stale_fence = stalled.fence_args()
        await asyncio.sleep(0.3)  # a pause longer than the lease: it expires meanwhile
        assert not stalled.held  # by its own clock it knows, too
        assert await fresh.acquire()
        assert fresh.fence is not None and stalled.fence is not None
        assert fresh.fence > stalled.fence
        # The stalled holder wakes up and acts on what it believed: refused, in Redis.
        with pytest.raises(Fenced):
            await store.maintenance.remove(["old"], only_expired=True, fence=stale_fence)
        assert await store.get_metadata("old") is not None
        assert not await stalled.renew()
        assert not await stalled.release()  # and cannot free the new holder's lease
        assert await fresh.renew()
        assert await store.maintenance.remove(["old"], only_expired=True, fence=fresh.fence_args())
        assert await store.get_metadata("old") is None
        check_never_held_twice(await fresh.records())
    finally:
        await store.close()


async def test_two_stores_clean_up_under_the_lease(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # A lease that outlives any stall of a busy machine (a holder whose loop stalled
    # past 0.3 s lost it, as it should, and the other had run too); the handover below
    # comes from the release, not the expiry.
    url = redis_server.url(prefix=prefix_for(tmp_path), lease_ttl=3.0)
    a = await open_storage(url, cleanup_interval=0.05)
    b = await open_storage(url, cleanup_interval=0.05)
    assert isinstance(a, RedisStorage) and isinstance(b, RedisStorage)
    try:
        for i in range(6):
            await a.create_session(Session.new(f"s{i}", ttl=1))
        await a.create_session(Session.new("lasting", ttl=3600))
        for _ in range(60):
            if (await a.list_sessions(SessionFilter(limit=100))).total == 1:
                break
            await asyncio.sleep(0.05)
        assert [m.id for m in (await b.list_sessions(SessionFilter(limit=100))).sessions] == [
            "lasting"
        ]
        holder, other = (a, b) if a.maintenance.lease.held else (b, a)
        assert holder.maintenance.runs > 0 and other.maintenance.runs == 0
        await holder.close()  # releases the lease: the other takes over
        for _ in range(40):
            if other.maintenance.runs:
                break
            await asyncio.sleep(0.05)
        assert other.maintenance.runs > 0
        check_never_held_twice(await other.maintenance.lease.records())
    finally:
        await a.close()
        await b.close()


# The round below: every delete delayed DELETE_DELAY on its way to Redis, DELETES_AT_ONCE
# of them under way at once, ROUND_STEPS deep: at least 10 s however fast the machine,
# two leases and a half of LEASE_TTL. The lease is renewed every third of it meanwhile,
# so a process starved for up to 2.6 s still renews it in time (a 2 s lease, renewed
# every 0.67 s, lapsed under a load average of 20 to 30).
LEASE_TTL = 4.0
DELETE_DELAY = 0.5
ROUND_STEPS = 20


async def test_a_round_that_outlasts_the_lease_renews_it_and_ends_whole(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Unrenewed during the round, the lease lapsed a lease into it, the round's next
    # delete was fenced, the round given up ("lost the cleanup lease during a
    # cleanup"), and the lease granted again for the next round.
    caplog.set_level(logging.INFO, logger=maintenance.__name__)
    prefix = prefix_for(tmp_path)
    count = DELETES_AT_ONCE * ROUND_STEPS
    setup = await open_storage(redis_server.url(prefix=prefix), cleanup_interval=None)
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    store = None
    try:

        async def expired(i: int) -> None:
            await setup.create_session(Session.new(f"gone-{i}"))
            await setup.update_session_state(f"gone-{i}", SessionState.EXPIRED)

        await asyncio.gather(*(expired(i) for i in range(count)))
        await setup.create_session(Session.new("lasting"))
        proxy.delay(b"gone-", DELETE_DELAY)  # the deletes name the sessions; nothing else does
        store = await open_storage(
            f"redis://127.0.0.1:{port}/0?prefix={prefix}&lease_ttl={LEASE_TTL}"
            f"&max_connections={8 * DELETES_AT_ONCE}",  # DELETES_AT_ONCE at once, not fewer
            cleanup_interval=0.5,
        )
        assert isinstance(store, RedisStorage)
        for _ in range(600):
            if proxy.delayed:
                break
            await asyncio.sleep(0.05)
        began = time.monotonic()
        for _ in range(800):  # every expired session gone (within 40 s)
            listed = await setup.list_sessions(SessionFilter(limit=10))
            if [m.id for m in listed.sessions] == ["lasting"]:
                break
            await asyncio.sleep(0.05)
        lasted = time.monotonic() - began
        assert [m.id for m in listed.sessions] == ["lasting"]
        assert lasted > 2 * LEASE_TTL, lasted  # the premise: the round outlasted the lease
        # Seen gone once Redis ran the last delete; the round ends (and says what it
        # removed) once that delete's reply is back through the proxy: waited for.
        for _ in range(200):
            if store.maintenance.runs:
                break
            await asyncio.sleep(0.05)
        assert store.maintenance.runs >= 1, "the round never ended"
        records = await store.maintenance.lease.records()
        grants = [r.at_ms - records[0].at_ms for r in records if r.op == "grant"]
        assert grants == [0], grants
        check_never_held_twice(records)
        said = [record.getMessage() for record in caplog.records]
        assert said.count(f"removed {count} expired sessions") == 1, said  # in one round
    finally:
        if store is not None:
            await store.close()
        await proxy.close()
        await setup.close()
