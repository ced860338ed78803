"""The Redis store's record of its generation (persistence/redis/generation.py), on real
redis-servers killed and started again: the epoch change a lossy restart makes is made
once however many instances see it; a lossy Redis whose record is missing changes the
epoch; a record lost while Redis runs on is put back, not refused for ever; a record
deleted never brings back an epoch served before; a durable store without the record
keeps its epochs; a burst that fills the pool asks Redis its run once a connection;
and a touch or a move under the old epoch is ``HistoryLost``, not ``SessionNotFound``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.redis.scripts import HistoryLost
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.instances import eventually
from tests.redis_lossy_support import _answers, crash_and_restart, lossy_redis, snapshot
from tests.redis_server import RedisServer, prefix_for


async def test_the_change_is_made_once_however_many_instances_see_the_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Two stores see one restart: one token, both serve the same new epoch. A third
    store opened read-only serves it too. An append or a read that names the old
    epoch is refused (nothing appended), as from an actor not yet told."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    first = await open_storage(url)
    second = await open_storage(url)
    try:
        assert isinstance(first, RedisStorage) and isinstance(second, RedisStorage)
        await first.create_session(Session.new("s"))
        await first.append_event("s", AgentEvent.token("kept"))
        old = await first.epoch("s")
        await snapshot(server)
        crash_and_restart(server)

        async def both_changed() -> bool:
            try:  # Redis may still be coming back
                return await first.epoch("s") != old and await second.epoch("s") != old
            except StorageError:
                return False

        await eventually(both_changed, timeout=10)
        assert await first.epoch("s") == await second.epoch("s")
        assert first.generation.token == second.generation.token != ""
        reader = await open_storage(url, read_only=True)
        try:
            assert await reader.epoch("s") == await first.epoch("s")
        finally:
            await reader.close()
        with pytest.raises(StorageError, match="epoch changed"):  # a caller not told yet
            await second.append_events("s", [(AgentEvent.token("stale"), None)], epoch=old)
        with pytest.raises(StorageError, match="epoch changed"):
            await second.read_events("s", 0, epoch=old)
        appended = await second.append_event("s", AgentEvent.token("after"))
        assert appended.seq == 2
        events = await first.read_events("s", 0, epoch=await first.epoch("s"))
        assert [event.seq for event in events] == [1, 2]
    finally:
        await first.close()
        await second.close()


async def test_a_lossy_redis_whose_record_is_missing_changes_the_epoch(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """No record of the generation on a lossy Redis that holds sessions (a restart
    that lost the record with the rest, or the first open of this version): the
    sessions are served under a new epoch. On an empty store nothing changes."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    record = f"{prefix_for(tmp_path)}:{{idx}}:generation"
    client = redis.asyncio.Redis(port=server.port)
    try:
        async with await open_storage(url) as store:
            assert isinstance(store, RedisStorage) and store.generation.token == ""
            await store.create_session(Session.new("s"))
            old = await store.epoch("s")
        assert await client.delete(record) == 1
        async with await open_storage(url) as store:
            assert await store.epoch("s") != old
    finally:
        await client.aclose()


async def test_a_record_lost_while_redis_runs_on_is_put_back_not_refused_for_ever(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The generation's record is lost while Redis runs on (an operator's DEL, an
    eviction): the scripts serve the stored epochs, the instance its token. An append
    under the epoch the instance served is refused once (``HistoryLost``, retryable);
    the instance, which checked this run of Redis, puts the record back with its
    token (nothing was lost: no restart), marked lossy, so the epoch stays and
    appends under it go on, instead of being refused until Redis restarts."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    record = f"{prefix_for(tmp_path)}:{{idx}}:generation"
    async with await open_storage(url) as store:
        await store.create_session(Session.new("s"))
        await snapshot(server)
        crash_and_restart(server)
        await eventually(lambda: _answers(store, "s"), timeout=10)
        served = await store.epoch("s")
        client = redis.asyncio.Redis(port=server.port)
        try:
            token = await client.hget(record, "token")
            assert token and served.endswith("." + token.decode())
            assert await client.delete(record) == 1
            with pytest.raises(HistoryLost):
                await store.append_events("s", [(AgentEvent.token("a"), None)], epoch=served)
            assert await client.hmget(record, "token", "lossy") == [token, b"1"]
        finally:
            await client.aclose()
        assert await store.epoch("s") == served
        appended = await store.append_events("s", [(AgentEvent.token("b"), None)], epoch=served)
        assert appended[0].seq == 1


async def test_a_record_deleted_never_brings_back_an_epoch_served_before(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A lossy Redis restarted (its token changed every epoch), then made durable, and
    its record deleted: an instance that opens then, which never checked this run,
    cannot tell which token was served, nor whether the run could lose writes. It
    serves a fresh epoch, never the one from before the restart, whose seqs the
    restart may have given to other events (a client holding it would resume
    ``resumed: true`` onto another history)."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    record = f"{prefix_for(tmp_path)}:{{idx}}:generation"
    async with await open_storage(url) as store:
        await store.create_session(Session.new("s"))
        before_the_restart = await store.epoch("s")
        await snapshot(server)
        crash_and_restart(server)
        await eventually(lambda: _answers(store, "s"), timeout=10)
        after_the_restart = await store.epoch("s")
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.config_set("appendonly", "yes")
        await client.config_set("appendfsync", "always")
        assert await client.delete(record) == 1
    finally:
        await client.aclose()
    async with await open_storage(url) as store:
        assert await store.epoch("s") not in (before_the_restart, after_the_restart)


async def test_a_durable_store_without_the_record_keeps_its_epochs(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A durable Redis whose record never held a token nor a lossy mark, so no
    ``generation:marked`` either: a store 0.1.0 wrote (no record), or this one's
    record deleted. Every epoch served was the stored one: an instance that opens
    serves it on, and closes no viewer with 1012."""
    server = start_redis("durable")
    url = server.url(prefix=prefix_for(tmp_path))
    record = f"{prefix_for(tmp_path)}:{{idx}}:generation"
    async with await open_storage(url) as store:
        await store.create_session(Session.new("s"))
        served = await store.epoch("s")
    client = redis.asyncio.Redis(port=server.port)
    try:
        assert not await client.exists(record + ":marked")
        assert await client.delete(record) == 1
        async with await open_storage(url) as store:
            assert isinstance(store, RedisStorage)
            assert await store.epoch("s") == served
            assert store.generation.changes == 0
        assert await client.hget(record, "token") == b""
    finally:
        await client.aclose()


async def test_a_burst_that_fills_the_pool_asks_redis_its_run_once_a_connection(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Each connection the store makes asks Redis its run (INFO server) before it
    carries a call. 400 appends at once on a fresh store fill its pool (50
    connections): Redis is asked about once a connection, not once a call, and each
    append is one script call."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    client = redis.asyncio.Redis(port=server.port)
    async with await open_storage(url) as store:
        ids = [f"s{i}" for i in range(20)]
        for session_id in ids:
            await store.create_session(Session.new(session_id))
        before = await client.info("commandstats")
        await asyncio.gather(
            *(store.append_event(ids[i % 20], AgentEvent.token(f"e{i}")) for i in range(400))
        )
        after = await client.info("commandstats")
    await client.aclose()

    def calls(name: str) -> int:
        done: int = after.get(name, {}).get("calls", 0) - before.get(name, {}).get("calls", 0)
        return done

    assert calls("cmdstat_evalsha") == 400
    # One INFO per connection made (each says HELLO first), give or take this test's
    # own INFO and a heartbeat's look: not one per call.
    assert calls("cmdstat_info") <= calls("cmdstat_hello") + 3


async def test_a_touch_or_a_move_under_the_old_epoch_is_history_lost_not_not_found(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """After a lossy restart the instance serves the new epoch; an actor still holding
    the old one touches the session, or moves its state: the session is there, its
    history was lost, so the answer is the retryable ``HistoryLost`` (its peers
    resume), never ``SessionNotFound`` (which tells them the session is gone: 4404,
    stop). Nothing is written; a presence join under it is refused the same way."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with await open_storage(url) as store:
        await store.create_session(Session.new("s"))
        old = await store.epoch("s")
        await snapshot(server)
        crash_and_restart(server)
        await eventually(lambda: _answers(store, "s"), timeout=10)
        assert await store.epoch("s") != old
        with pytest.raises(HistoryLost):
            await store.touch("s", epoch=old)
        with pytest.raises(HistoryLost):
            await store.update_session_state("s", SessionState.IDLE, epoch=old)
        with pytest.raises(HistoryLost):
            await store.presence.join("s", "c_1", "client", epoch=old)
        meta = await store.get_metadata("s")
        assert meta is not None and meta.state == SessionState.ACTIVE
        await store.touch("s", epoch=meta.epoch)
