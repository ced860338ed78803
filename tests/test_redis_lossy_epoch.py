"""A restart of a Redis that may lose writes it acknowledged (``accept_lossy=true``)
changes every session's epoch (persistence/redis/generation.py), on real
redis-servers killed and started again: a client that resumes with the epoch it held
is told ``resumed: false``, however much of the log Redis kept, and new events are
under the new epoch on every instance; viewers connected meanwhile are closed with
1012. A Redis that keeps what it acknowledged (``appendonly yes``, ``appendfsync
always``) keeps every epoch across a restart, and a resume there replays."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.redis.scripts import HistoryLost
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token

CHANGED = "the store restarted and changed the epoch; resume"
LOSSY = {"appendonly": "no", "appendfsync": "everysec", "save": ""}


def lossy_redis(start_redis: Callable[[str], RedisServer]) -> RedisServer:
    """A redis-server with no append-only file: a restart goes back to its last
    snapshot (taken by ``SAVE`` in these tests), and loses what came after."""
    server = start_redis("lossy")
    server.stop()
    server.persistence = dict(LOSSY)
    server.start()
    return server


async def snapshot(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.save()
    finally:
        await client.aclose()


def crash_and_restart(server: RedisServer) -> None:
    server.stop(signal.SIGKILL)
    server.start()


@asynccontextmanager
async def two_servers(url: str) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    async with run_server(store=url) as a, run_server(store=url) as b:
        yield a, b


@asynccontextmanager
async def attached(
    server: BambooServer, session_id: str, **hello: Any
) -> AsyncIterator[tuple[Peer, dict[str, Any]]]:
    """``attach`` once the server's store answers again (Redis restarting: 1011)."""
    for _ in range(100):
        try:
            async with attach(server, session_id, **hello) as attached_peer:
                yield attached_peer
                return
        except (AssertionError, ConnectionClosed):  # 1011 before its welcome: Redis away
            await asyncio.sleep(0.1)
    raise AssertionError("no welcome in 100 tries")


async def publish(agent: Peer, count: int, start: int = 0) -> list[int]:
    seqs = []
    for i in range(start, start + count):
        ack = await agent.request({"type": "event", "id": i, "event": token(f"e{i}")}, "ack")
        seqs.append(ack["seq"])
    return seqs


async def ten_events_five_in_the_snapshot(server: RedisServer, agent: Peer, viewer: Peer) -> None:
    """Seqs 1 to 10 acknowledged and seen by ``viewer``, Redis's snapshot taken after 5."""
    assert await publish(agent, 5) == [1, 2, 3, 4, 5]
    await snapshot(server)
    assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
    assert [(await viewer.recv_type("event"))["seq"] for _ in range(10)] == list(range(1, 11))


async def resumes_after_the_loss(first: BambooServer, second: BambooServer, old: str) -> None:
    """After a restart that kept 5 of 10 events: a resume with the old epoch from the
    lost seq 10 (on ``second``) and from the kept seq 3 (on ``first``) are both
    ``resumed: false`` under one new epoch; a viewer of the new epoch resumes from 5,
    and the next event takes seq 6 and reaches it."""
    async with attached(second, "s", last_seq=10, epoch=old) as (_, lost):
        assert (lost["resumed"], lost["last_seq"]) == (False, 5)
        new = lost["epoch"]
        assert new != old
    async with (
        attached(first, "s", last_seq=3, epoch=old) as (agent, kept),
        attached(second, "s", last_seq=5, epoch=new) as (viewer, current),
    ):
        assert (kept["resumed"], kept["epoch"]) == (False, new)
        assert (current["resumed"], current["replay"]) == (True, 0)
        assert await publish(agent, 1, 10) == [6]
        event = await viewer.recv_type("event")
        assert (event["seq"], event["event"]["content"]) == (6, "e10")


async def epoch_changed(store: RedisStorage, old: str) -> bool:
    """Whether session ``s``'s epoch is no longer ``old``; False while Redis does not
    answer."""
    try:
        return await store.epoch("s") != old
    except StorageError:
        return False


async def test_a_lossy_restart_changes_the_epoch_on_every_instance(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """10 events acknowledged, 5 of them in Redis's snapshot; Redis killed and started
    again keeps the 5. A viewer on the other instance is closed with 1012; resumes with
    the old epoch are ``resumed: false`` on both instances, whether ``last_seq`` is
    still in the log (3) or lost (10); the next event takes seq 6 under the new epoch,
    the same on both instances, and reaches a viewer of the new epoch."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true", heartbeat=1)
    async with two_servers(url) as (a, b):
        async with (
            attach(a, "s", create=True, role="agent") as (agent, welcome),
            attach(b, "s", last_seq=0) as (viewer, _),
        ):
            old = welcome["epoch"]
            await both_told_the_epoch_changed(server, agent, viewer)
        await resumes_after_the_loss(a, b, old)


async def both_told_the_epoch_changed(server: RedisServer, agent: Peer, viewer: Peer) -> None:
    """Ten events, five of them in the snapshot, then a crash: the agent and the viewer
    are closed 1012, the epoch changed."""
    await ten_events_five_in_the_snapshot(server, agent, viewer)
    crash_and_restart(server)
    for peer in (viewer, agent):
        await peer.closed()
        assert (peer.ws.close_code, peer.ws.close_reason) == (1012, CHANGED)


async def test_a_parked_session_resumes_under_the_new_epoch_after_a_lossy_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The agent leaves before Redis restarts: its session's actor is parked, with the
    10 events in memory. After the restart a resume with the old epoch is not served
    from them: ``resumed: false``, the new epoch, and the 5 events Redis kept."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with run_server(store=url, disconnect_retention=60) as a:
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await snapshot(server)
            assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
        crash_and_restart(server)
        async with attached(a, "s", last_seq=8, epoch=old) as (viewer, welcome):
            assert (welcome["resumed"], welcome["last_seq"]) == (False, 5)
            assert welcome["epoch"] != old
            reply = await viewer.request({"type": "events", "id": 1}, "events")
            assert [event["seq"] for event in reply["events"]] == [1, 2, 3, 4, 5]


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


async def test_a_durable_redis_keeps_every_epoch_across_a_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``appendonly yes``, ``appendfsync always``: Redis killed and started again has
    every acknowledged event; a client resuming with the epoch it held is replayed
    what it missed, and the generation's token stays empty."""
    server = start_redis("durable")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=url) as a:
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
        crash_and_restart(server)
        async with attached(a, "s", last_seq=3, epoch=old) as (viewer, resumed):
            assert (resumed["resumed"], resumed["epoch"], resumed["replay"]) == (True, old, 2)
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(2)] == [4, 5]
        storage = a.storage
        assert isinstance(storage, RedisStorage) and storage.generation.token == ""


async def test_an_instance_not_yet_told_serves_no_old_epoch_over_the_new_history(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis (lossy) is down long enough for the second instance's listener to wait
    between attempts to reconnect; once it is back, the first instance takes seq 6
    for a new event under the new epoch. A client of the second instance that saw
    the lost seq 6 under the old epoch resumes from it there, before that
    instance's listener is back: ``resumed: false`` and the new epoch, not ``resumed:
    true`` under the old epoch over a seq 6 it never saw."""
    await no_old_epoch_from_an_instance_not_yet_told(lossy_redis(start_redis), tmp_path)


async def no_old_epoch_from_an_instance_not_yet_told(
    server: RedisServer,
    tmp_path: Path,
    before: Callable[[RedisServer, BambooServer, BambooServer], Awaitable[None]] | None = None,
) -> None:
    """Seq 6 lost in a crash, taken again by the first instance under the new epoch; a
    resume from it on the second, whose listener still backs off: ``resumed: false``.
    ``before``: what the test does to the two servers first."""
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with two_servers(url) as (a, b):
        if before is not None:
            await before(server, a, b)
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await snapshot(server)
            assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
        server.stop(signal.SIGKILL)
        await asyncio.sleep(1.5)  # setup, not a measure: the listeners back off meanwhile
        server.start()
        async with attached(a, "s", last_seq=5, epoch=old) as (agent, _):
            assert await publish(agent, 1, 10) == [6]
            async with attached(b, "s", last_seq=6, epoch=old) as (_, resumed):
                assert (resumed["resumed"], resumed["last_seq"]) == (False, 6)
                assert resumed["epoch"] != old


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


async def _answers(store: Any, session_id: str) -> bool:
    try:  # Redis may still be coming back
        await store.epoch(session_id)
    except StorageError:
        return False
    return True


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
