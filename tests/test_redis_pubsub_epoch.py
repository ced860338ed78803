"""What a Redis store publishes names the epoch of the session's log, and a listener
acts on it for the subscriptions of that log only: a late ``closed`` or ``deleted`` of
a session deleted and created again leaves the new log's subscriptions be. The format
stays readable by a listener of the code before (a rolling upgrade): it takes a
batch's epoch entry for an event it has seen and ignores a notice with an epoch, and
acts on the bare notice published after it; messages without an epoch (an older
instance's) are acted on as before, for every subscription of the session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio

from bamboo_session.persistence import Storage, open_storage
from bamboo_session.persistence.feed import CLOSED, DELETED, Feed
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.micros import from_micros
from bamboo_session.protocol.models import AgentEvent, Session, SessionState, StoredEvent
from tests.redis_server import RedisServer, link_replica, prefix_for

RECV = 5.0


@pytest.fixture
async def pair(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    a, b = await open_storage(url), await open_storage(url)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def ended(subscription: object) -> str | None:
    """What a subscription's next batch ends it with (None: it has events)."""
    batch = await asyncio.wait_for(subscription.next_batch(), RECV)  # type: ignore[attr-defined]
    assert batch == []
    return subscription.ended  # type: ignore[attr-defined]


async def test_late_notices_of_the_old_log_end_only_its_subscriptions(
    pair: tuple[Storage, Storage],
) -> None:
    """B hears A's close and delete of the old log only after it subscribed to the new
    one: the old subscription ends, the new one goes on."""
    a, b = pair
    assert isinstance(b, RedisStorage)
    await a.create_session(Session.new("s1"))
    old = await b.subscribe("s1", 0)
    listener = b.live.listener
    deliver = listener._deliver
    held: list[tuple[str, bytes]] = []
    listener._deliver = lambda *args: held.append(args)  # type: ignore[method-assign]
    try:
        await a.update_session_state("s1", SessionState.CLOSED)
        await a.delete_session("s1")
        await a.create_session(Session.new("s1"))
        new = await b.subscribe("s1", 0)
        await a.append_event("s1", AgentEvent.token("new"))
        for _ in range(200):
            if any(data[:1] == b"[" for _, data in held):
                break
            await asyncio.sleep(0.02)
    finally:
        del listener._deliver
    notices = [data for _, data in held if data[:1] != b"["]
    assert [n.split(b" ")[0] for n in notices] == [b"closed"] * 2 + [b"deleted"] * 2
    for session_id, data in held:
        deliver(session_id, data)
    assert await ended(old) == DELETED  # its close overtaken by the delete heard next
    batch = await asyncio.wait_for(new.next_batch(), RECV)
    assert [event.seq for event in batch] == [1] and new.ended is None
    await a.append_event("s1", AgentEvent.token("more"))
    batch = await asyncio.wait_for(new.next_batch(), RECV)
    assert [event.seq for event in batch] == [2] and new.ended is None
    new.close()


@pytest.mark.parametrize("notice", [b"closed", b"deleted"])
async def test_a_bare_notice_of_an_older_instance_ends_every_subscription(
    pair: tuple[Storage, Storage], notice: bytes
) -> None:
    """An instance running the code before publishes bare notices and untagged
    batches: they are acted on as before, whatever the epoch."""
    a, b = pair
    assert isinstance(b, RedisStorage)
    await a.create_session(Session.new("s1"))
    subscription = await b.subscribe("s1", 0)
    await a.append_event("s1", AgentEvent.token("x"))
    batch = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [event.seq for event in batch] == [1]
    # A batch with no epoch entry, as the code before publishes it: offered as before.
    untagged = b'[[2,1700000000000000,null,{"type":"token","text":"y"}]]'
    b.live.listener._deliver("s1", untagged)
    batch = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [event.seq for event in batch] == [2]
    channel = b.layout.channel("s1")
    await b.redis.call(b.redis.publish_command, channel, notice)
    assert await ended(subscription) == (CLOSED if notice == b"closed" else DELETED)


# -- the format, and a listener of the code before ----------------------------------------

_OLD_BATCH = msgspec.json.Decoder(list[tuple[int, int, str | None, msgspec.Raw]])


def old_deliver(feed: Feed, session_id: str, data: bytes) -> None:
    """The listener's ``_deliver`` before epochs were published (presence aside)."""
    if data[:1] == b"[":
        feed.publish(
            session_id,
            [
                StoredEvent.from_json(seq, from_micros(ts), raw, key)
                for seq, ts, key, raw in _OLD_BATCH.decode(data)
            ],
        )
    elif data == b"closed":
        feed.end(session_id, CLOSED)
    elif data == b"deleted":
        feed.end(session_id, DELETED)


@pytest.mark.parametrize("replicas", [False, True])
async def test_what_is_published_names_the_epoch_and_an_older_listener_reads_it(
    redis_server: RedisServer,
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    replicas: bool,
) -> None:
    """Read off the channel as it is published (by the scripts, or after WAIT by the
    caller with ``wait_replicas``): a batch's first entry is [0, 0, epoch, null],
    an imported one's (``migrate``) too; a
    close and a delete publish ``<notice> <epoch>`` then ``<notice>``. A listener of
    the code before delivers the batch's events (not the epoch entry) and ends its
    subscriptions once per notice."""
    admin = None
    if replicas:
        replica = start_redis("replica")
        admin = redis.asyncio.Redis(port=replica.port)
        await link_replica(admin, redis_server)
    prefix = prefix_for(tmp_path)
    store = await open_storage(redis_server.url(prefix=prefix, wait_replicas=int(replicas)))
    raw = redis.asyncio.Redis(port=redis_server.port)
    pubsub = raw.pubsub()
    try:
        assert isinstance(store, RedisStorage)
        channel = store.layout.channel("s1")
        sharded = store.redis.publish_command == "SPUBLISH"
        await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))
        await store.create_session(Session.new("s1"))
        epoch = await store.epoch("s1")
        await store.append_events("s1", [(AgentEvent.token(t), None) for t in "ab"])
        then = from_micros(0)
        await store.import_events("s1", [StoredEvent(3, then, AgentEvent.token("c"))])
        await store.update_session_state("s1", SessionState.CLOSED)
        await store.delete_session("s1")
        published: list[bytes] = []
        async with asyncio.timeout(RECV):
            while len(published) < 6:
                message = await pubsub.get_message(timeout=1.0)
                if message and message["type"] in ("message", "smessage"):
                    published.append(message["data"])
        batch, imported = (msgspec.json.decode(data) for data in published[:2])
        assert batch[0] == imported[0] == [0, 0, epoch, None]
        assert [entry[0] for entry in batch[1:]] == [1, 2]
        assert [entry[0] for entry in imported[1:]] == [3]
        tagged = b" " + epoch.encode()
        assert published[2:] == [b"closed" + tagged, b"closed", b"deleted" + tagged, b"deleted"]
        # A listener of the code before, following the log from seq 0.
        feed = Feed()

        async def nothing(after: int, limit: int) -> list[StoredEvent]:
            return []

        subscription = feed.subscribe("s1", 0, 0, nothing)
        old_deliver(feed, "s1", published[0])
        batch_out = await asyncio.wait_for(subscription.next_batch(), RECV)
        assert [event.seq for event in batch_out] == [1, 2]
        ends: list[str | None] = []
        for data in published[2:]:
            before = subscription.ended or subscription._ending
            old_deliver(feed, "s1", data)
            after = subscription.ended or subscription._ending
            ends.append(after if after != before else None)
        assert ends == [None, CLOSED, None, DELETED]
    finally:
        await pubsub.aclose()
        await raw.aclose()
        await store.close()
        if admin is not None:
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await admin.aclose()


async def test_what_comes_for_an_epoch_before_a_subscription_knows_its_own_waits() -> None:
    """Between a subscription's registration and the store's answer with its epoch
    (Redis: the channel confirmed, then HMGET), a batch or a notice of an epoch is
    kept, then applied if it is of the subscription's log, dropped if not."""
    feed = Feed()

    async def nothing(after: int, limit: int) -> list[StoredEvent]:
        return []

    event = StoredEvent.from_json(1, from_micros(0), msgspec.Raw(b'{"type":"token","text":"x"}'))
    x, y = feed.subscribe("s1", 0, 0, nothing), feed.subscribe("s1", 0, 0, nothing)
    feed.publish("s1", [event], "X")
    feed.end("s1", DELETED, "Y")
    assert not x.ready() and not y.ready()
    x.set_epoch("X")
    y.set_epoch("Y")
    assert y.ended == DELETED
    assert [e.seq for e in await asyncio.wait_for(x.next_batch(), RECV)] == [1]
    assert x.ended is None
    feed.end("s1", DELETED, "Y")  # known now: no longer kept
    assert x.ended is None
    feed.end("s1", CLOSED)  # no epoch: every subscription, as before
    assert await asyncio.wait_for(x.next_batch(), RECV) == [] and x.ended == CLOSED


async def test_a_replacement_publishes_the_deleted_notice_of_the_old_epoch(
    pair: tuple[Storage, Storage], redis_server: RedisServer
) -> None:
    """create.lua taking over an expired session publishes ``deleted <old epoch>``
    then ``deleted``, and the new session's first batch names the new epoch."""
    a, _ = pair
    assert isinstance(a, RedisStorage)
    await a.create_session(Session.new("s1"))
    old = await a.epoch("s1")
    await a.update_session_state("s1", SessionState.EXPIRED)
    raw = redis.asyncio.Redis(port=redis_server.port)
    pubsub = raw.pubsub()
    try:
        channel = a.layout.channel("s1")
        sharded = a.redis.publish_command == "SPUBLISH"
        await (pubsub.ssubscribe(channel) if sharded else pubsub.subscribe(channel))
        await a.create_session(Session.new("s1"), replace_expired=True)
        new = await a.epoch("s1")
        assert new != old
        await a.append_event("s1", AgentEvent.token("x"))
        published: list[bytes] = []
        async with asyncio.timeout(RECV):
            while len(published) < 3:
                message = await pubsub.get_message(timeout=1.0)
                if message and message["type"] in ("message", "smessage"):
                    published.append(message["data"])
        assert published[:2] == [b"deleted " + old.encode(), b"deleted"]
        assert msgspec.json.decode(published[2])[0] == [0, 0, new, None]
    finally:
        await pubsub.aclose()
        await raw.aclose()
