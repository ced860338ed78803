"""``migrate`` into a Redis store that server instances serve (an online migration, or a
rerun that finishes a session the servers already hold), on a real redis-server with
two in-process servers over it: what the import writes reaches every instance's
viewers as the store's other writes do. Its events are delivered live, once, in order;
a final state of ``closed`` gives them ``closed`` and 1000, as a close on an instance
would (without its notice, they would wait for their server's next look at the
session, up to ``idle_timeout``). Read off the channel, with and without
``wait_replicas``: an import that closes the session publishes ``closed <epoch>`` then
``closed``, as ``state.lua`` does; one that leaves it open, or closed, publishes
nothing, and one that would reopen it is refused. A close (or a delete) that fewer
replicas confirmed in time than asked is on the primary all the same, and its rerun
(or retry) finds it done: it is told at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.feed import CLOSED, DELETED
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.persistence.migrate import migrate
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.errors import InvalidTransition
from bamboo_session.protocol.models import AgentEvent, Session, SessionState, StoredEvent
from tests.redis_server import RedisServer, link_replica, prefix_for
from tests.support import WELCOME_TIMEOUT, Peer, attach, opened, run_server

# The close's notice comes after the import's write, which waits for Redis's fsync
# (appendfsync always): on a loaded machine whose disk stalls that takes seconds, as a
# welcome does. The servers' own look at the session comes only after idle_timeout.
NOTICE_TIMEOUT = WELCOME_TIMEOUT
IDLE_TIMEOUT = 300.0  # the default, said here: no look rescues a lost notice in a test


async def events_until_closed(peer: Peer) -> tuple[list[Any], dict[str, Any], int | None]:
    """The events a viewer gets, then its ``closed`` frame and close code."""
    code, frames = await peer.closed(NOTICE_TIMEOUT)
    events = [(f["seq"], f["event"]["content"]) for f in frames if f["type"] == "event"]
    ends = [f for f in frames if f["type"] == "closed"]
    assert [f["type"] for f in frames if f["type"] not in ("event", "presence")] == ["closed"]
    return events, ends[0], code


async def test_a_rerun_into_a_served_redis_reaches_the_viewers_on_every_instance(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    async with (
        opened("memory://") as source,
        opened(url) as target,
        run_server(tmp_path / "a", store=url, idle_timeout=IDLE_TIMEOUT) as one,
        run_server(tmp_path / "b", store=url, idle_timeout=IDLE_TIMEOUT) as other,
    ):
        await source.create_session(Session.new("moved"))
        await source.append_event("moved", AgentEvent.token("before"))
        await migrate(source, target)  # the first run: the servers serve it from here
        epoch = await source.epoch("moved")
        async with AsyncExitStack() as viewers:
            hello = {"last_seq": 1, "epoch": epoch}
            peers = [
                (await viewers.enter_async_context(attach(server, "moved", **hello)))[0]
                for server in (one, other)
            ]
            # Written to the source meanwhile, then carried over by a rerun.
            for content in ("after 1", "after 2"):
                await source.append_event("moved", AgentEvent.token(content))
            await source.update_session_state("moved", SessionState.CLOSED)
            again = await migrate(source, target)
            assert (again.resumed, again.events_done) == (1, 2)
            for peer in peers:
                events, closed, code = await events_until_closed(peer)
                assert events == [(2, "after 1"), (3, "after 2")]
                assert (closed["reason"], code) == ("session closed", 1000)
        stored = await target.get_metadata("moved")
        assert stored is not None and stored.state == SessionState.CLOSED
        assert stored.epoch == epoch


@pytest.mark.parametrize("replicas", [False, True])
async def test_an_import_that_closes_the_session_publishes_the_close(
    redis_server: RedisServer,
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    replicas: bool,
) -> None:
    admin = None
    if replicas:  # the notice is then the caller's, published after WAIT
        admin = redis.asyncio.Redis(port=start_redis("replica").port)
        await link_replica(admin, redis_server)
    url = redis_server.url(prefix=prefix_for(tmp_path), wait_replicas=int(replicas))
    raw = redis.asyncio.Redis(port=redis_server.port)
    pubsub = raw.pubsub()
    try:
        async with opened(url) as store:
            assert isinstance(store, RedisStorage) and isinstance(store, SessionImport)
            channel = store.layout.channel("s1")
            sharded = store.redis.publish_command == "SPUBLISH"
            await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))
            await store.create_session(Session.new("s1"))
            meta = await store.get_metadata("s1")
            assert meta is not None
            await store.import_metadata(meta)  # left active: nothing to tell
            closed = msgspec.structs.replace(meta, state=SessionState.CLOSED)
            await store.import_metadata(closed)
            await store.import_metadata(closed)  # closed already: told once
            with pytest.raises(InvalidTransition, match="closed"):  # never reopened
                await store.import_metadata(meta)
            found = await store.get_metadata("s1")
            assert found is not None and found.state == SessionState.CLOSED
            await store.delete_session("s1")  # the end of what is read here
            published: list[bytes] = []
            async with asyncio.timeout(NOTICE_TIMEOUT):
                while len(published) < 4:
                    message = await pubsub.get_message(timeout=1.0)
                    if message and message["type"] in ("message", "smessage"):
                        published.append(message["data"])
            tagged = b" " + meta.epoch.encode()
            assert published == [b"closed" + tagged, b"closed", b"deleted" + tagged, b"deleted"]
    finally:
        await pubsub.aclose()
        await raw.aclose()
        if admin is not None:
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await admin.aclose()


@pytest.mark.parametrize("write", ["import", "state", "delete"])
async def test_a_close_the_replicas_missed_is_told_all_the_same(
    redis_server: RedisServer, tmp_path: Path, write: str
) -> None:
    """With ``wait_replicas`` and no replica to confirm: every write fails, and stays
    on the primary. A subscription on another instance ends at once (it waited for
    its server's next look, up to ``idle_timeout``: a rerun of ``migrate`` skips the
    session, whose final state is there, and a retried close or delete finds it done)."""
    prefix = prefix_for(tmp_path)
    url = redis_server.url(prefix=prefix, wait_replicas=1, wait_timeout_ms=50)
    async with opened(url) as store, opened(redis_server.url(prefix=prefix)) as other:
        assert isinstance(store, SessionImport)
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            await store.create_session(Session.new("s1"))
        subscription = await other.subscribe("s1", 0)
        meta = await other.get_metadata("s1")
        assert meta is not None
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            if write == "import":
                closed = msgspec.structs.replace(meta, state=SessionState.CLOSED)
                await store.import_metadata(closed)
            elif write == "state":
                await store.update_session_state("s1", SessionState.CLOSED)
            else:
                await store.delete_session("s1")
        assert await asyncio.wait_for(subscription.next_batch(), NOTICE_TIMEOUT) == []
        assert subscription.ended == (DELETED if write == "delete" else CLOSED)


async def test_events_the_replicas_missed_reach_the_other_instances_before_a_close(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """An append and an import that no replica confirmed are on the primary, and their
    batches are published all the same: a subscription on another instance gets them
    at once, and before a close that comes next (whose notice tells no seq: without
    them it ended with the events unseen)."""
    prefix = prefix_for(tmp_path)
    url = redis_server.url(prefix=prefix, wait_replicas=1, wait_timeout_ms=50)
    plain = redis_server.url(prefix=prefix)
    async with opened(url) as store, opened(plain) as other, opened(plain) as closer:
        assert isinstance(store, SessionImport)
        await closer.create_session(Session.new("s1"))
        subscription = await other.subscribe("s1", 0)
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            await store.append_event("s1", AgentEvent.token("appended"))
        imported = StoredEvent(2, datetime.now(UTC), AgentEvent.token("imported"))
        with pytest.raises(StorageError, match="0 of 1 replicas"):
            await store.import_events("s1", [imported])
        await closer.update_session_state("s1", SessionState.CLOSED)
        seen: list[int] = []
        while batch := await asyncio.wait_for(subscription.next_batch(), NOTICE_TIMEOUT):
            seen += [event.seq for event in batch]
        assert (seen, subscription.ended) == ([1, 2], CLOSED)
