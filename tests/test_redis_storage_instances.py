"""The Redis backend beyond the contract suite: several store instances on one Redis
act as one store (live delivery, read from the stream a megabyte at a time behind its
buffer, idempotency, close and delete reach every instance, a lost pub/sub connection
is caught up from the stream, the session cap holds between instances appending at
once)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection
from typing import cast

import pytest
import redis.asyncio

from bamboo_session.persistence import (
    Appended,
    InvalidTransition,
    SessionFull,
    Storage,
    Subscription,
    open_storage,
)
from bamboo_session.persistence.events import stored_size
from bamboo_session.persistence.feed import READ_BEHIND_BYTES
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState, StoredEvent
from tests.redis_server import RedisServer
from tests.redis_storage_support import (
    RECV,
    collect,
    url_fixture,  # noqa: F401 (a fixture)
)


@pytest.fixture
async def pair(url: Callable[..., str]) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two store instances on one keyspace, as two server processes would have."""
    a, b = await open_storage(url()), await open_storage(url())
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


# -- several instances ------------------------------------------------------------------


async def test_an_append_on_one_instance_reaches_a_subscriber_on_another(
    pair: tuple[Storage, Storage],
) -> None:
    a, b = pair
    await a.create_session(Session.new("s1"))
    await a.append_event("s1", AgentEvent.token("before"))
    subscription = await b.subscribe("s1", after_seq=0)
    await a.append_events("s1", [(AgentEvent.token(f"t{i}"), None) for i in range(5)])
    events = []
    while len(events) < 6:
        events.extend(await asyncio.wait_for(subscription.next_batch(), RECV))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    assert events[1].event == AgentEvent.token("t0")
    subscription.close()


async def test_a_subscriber_behind_reads_the_stream_a_megabyte_at_a_time(
    pair: tuple[Storage, Storage],
) -> None:
    """What a subscription behind its buffer reads from the stream at once is bounded in
    bytes: an instance behind its pub/sub (its viewers fed by another instance's
    publisher) read 512 events at once, whatever their size (256 MB of 500 KB events)."""
    a, b = pair
    await a.create_session(Session.new("s1"))
    subscription = await b.subscribe("s1", after_seq=0)
    for _ in range(12):  # 3.6 MB: past what a subscription buffers, read from the stream
        await a.append_events("s1", [(AgentEvent.token("x" * 300_000), None)])
    seqs: list[int] = []
    while len(seqs) < 12:
        batch = await asyncio.wait_for(subscription.next_batch(limit=512), RECV)
        assert len(batch) == 1 or sum(e.size for e in batch) <= READ_BEHIND_BYTES, len(batch)
        seqs.extend(e.seq for e in batch)
    assert seqs == list(range(1, 13))
    subscription.close()


async def test_concurrent_writers_on_both_instances_are_seen_once_in_order(
    pair: tuple[Storage, Storage],
) -> None:
    a, b = pair
    await a.create_session(Session.new("s1"))
    watchers = [await store.subscribe("s1", 0) for store in (a, a, b, b)]
    total = 4 * 50

    async def writer(store: Storage, name: str) -> list[int]:
        seqs = []
        for i in range(50):
            done = await store.append_event("s1", AgentEvent.token(f"{name}{i}"), f"{name}{i}")
            seqs.append(done.seq)
        return seqs

    # One watcher on each instance takes what is at hand first, as the actor does.
    readers = [
        asyncio.create_task(collect(w, total, at_hand=n % 2 == 1)) for n, w in enumerate(watchers)
    ]
    written = await asyncio.gather(writer(a, "a"), writer(b, "b"), writer(a, "c"), writer(b, "d"))
    assert sorted(seq for seqs in written for seq in seqs) == list(range(1, total + 1))
    for seqs in await asyncio.wait_for(asyncio.gather(*readers), RECV):
        assert seqs == list(range(1, total + 1))


async def test_a_key_retried_on_another_instance_is_a_duplicate(
    pair: tuple[Storage, Storage],
) -> None:
    a, b = pair
    await a.create_session(Session.new("s1"))
    assert await a.append_event("s1", AgentEvent.token("x"), "k1") == Appended(1)
    assert await b.append_event("s1", AgentEvent.token("x"), "k1") == Appended(1, True)
    assert await b.append_message("s1", Message.user("m"), "k2") == Appended(2)
    assert await a.append_message("s1", Message.user("m"), "k2") == Appended(2, True)
    assert await a.last_seq("s1") == 2


async def test_an_empty_key_is_a_key_on_every_instance(pair: tuple[Storage, Storage]) -> None:
    # "" is a key (PROTOCOL.md): in the scripts, on the stream, and in the published batch
    # that another instance's subscription reads.
    a, b = pair
    await a.create_session(Session.new("s1"))
    watching = await b.subscribe("s1", 0)
    assert await a.append_event("s1", AgentEvent.token("x"), "") == Appended(1)
    assert await b.append_event("s1", AgentEvent.token("x"), "") == Appended(1, True)
    assert await b.append_event("s1", AgentEvent.token("y")) == Appended(2)
    seen = []
    while len(seen) < 2:
        seen += await asyncio.wait_for(watching.next_batch(), RECV)
    assert [(e.seq, e.key) for e in seen] == [(1, ""), (2, None)]
    assert [(e.seq, e.key) for e in await a.read_events("s1")] == [(1, ""), (2, None)]
    watching.close()


async def test_close_and_delete_on_one_instance_end_subscriptions_on_another(
    pair: tuple[Storage, Storage],
) -> None:
    a, b = pair
    for name in ("closing", "deleting"):
        await a.create_session(Session.new(name))
    closing = await b.subscribe("closing", 0)
    deleting = await b.subscribe("deleting", 0)
    await a.append_event("closing", AgentEvent.token("last words"))
    await a.update_session_state("closing", SessionState.CLOSED)
    await a.delete_session("deleting")
    assert [e.seq for e in await asyncio.wait_for(closing.next_batch(), RECV)] == [1]
    assert await asyncio.wait_for(closing.next_batch(), RECV) == []
    assert closing.ended == "closed"
    assert await asyncio.wait_for(deleting.next_batch(), RECV) == []
    assert deleting.ended == "deleted"


async def test_a_touch_on_another_instance_after_a_close_leaves_the_session_closed(
    pair: tuple[Storage, Storage], url: Callable[..., str]
) -> None:
    # Two server processes, one store: B closes while A handles a peer's state request,
    # whose touch (the request's activity, written before its move) lands after the
    # close. The move is refused, and the touch changes nothing: the closed session,
    # and its place in the expiry index that cleanup reads, stay as they closed.
    a, b = pair
    await a.create_session(Session.new("s1", ttl=3600))
    await b.update_session_state("s1", SessionState.CLOSED)
    closed = await b.get_metadata("s1")
    assert closed is not None
    client = redis.asyncio.Redis.from_url(url().split("?")[0])
    try:
        layout = cast(RedisStorage, a).layout
        indexed = await client.zscore(layout.index + "expires", "s1")
        assert indexed is not None
        await asyncio.sleep(0.01)
        await a.touch("s1")
        with pytest.raises(InvalidTransition):
            await a.update_session_state("s1", SessionState.IDLE)
        assert await b.get_metadata("s1") == closed
        assert await client.zscore(layout.index + "expires", "s1") == indexed
    finally:
        await client.aclose()


async def test_a_lost_pubsub_connection_is_caught_up_from_the_stream(
    pair: tuple[Storage, Storage], redis_server: RedisServer
) -> None:
    a, b = pair
    assert isinstance(b, RedisStorage)
    await a.create_session(Session.new("s1"))
    subscription = await b.subscribe("s1", 0)
    await a.append_events("s1", [(AgentEvent.token("x"), None)] * 5)
    assert await collect(subscription, 5) == [1, 2, 3, 4, 5]
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        # Every pub/sub connection goes; what is appended meanwhile is never published
        # to b, which must notice and read it from the stream.
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await a.append_events("s1", [(AgentEvent.token("y"), None)] * 5)
        assert await collect(subscription, 5) == [6, 7, 8, 9, 10]
        assert b.live.listener.reconnects >= 1
        await a.append_event("s1", AgentEvent.token("z"))  # and live again
        assert await collect(subscription, 1) == [11]
    finally:
        await admin.aclose()


@pytest.mark.parametrize("appended", [0, 5])
async def test_a_session_replaced_while_pubsub_was_lost_ends_the_old_subscription(
    pair: tuple[Storage, Storage], redis_server: RedisServer, appended: int
) -> None:
    """An expired session replaced by a create (another epoch under the same id) while
    an instance's pub/sub connection was down: its subscriptions of the old log end as
    deleted at the catch-up, and none is handed an event of the new log as if it came
    after the old one's (seq 4 and 5 here), nor lingers on with the new log."""
    a, b = pair
    assert isinstance(b, RedisStorage)
    await a.create_session(Session.new("s1"))
    await a.append_events("s1", [(AgentEvent.token("old"), None)] * 3)
    subscription = await b.subscribe("s1", 3)
    await a.update_session_state("s1", SessionState.EXPIRED)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # Before b's listener is back (it waits 50 ms first): no notice reaches it.
        await a.create_session(Session.new("s1"), replace_expired=True)
        if appended:
            await a.append_events("s1", [(AgentEvent.token("new"), None)] * appended)
        got = [event async for event in _within(subscription, RECV)]
        assert (got, subscription.ended) == ([], "deleted")
        assert b.live.listener.reconnects >= 1
    finally:
        await admin.aclose()


async def test_a_new_logs_batch_heard_before_the_catch_up_is_not_the_old_ones_sequel(
    pair: tuple[Storage, Storage], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B's listener missed a delete and create on A (its messages lost), then connects
    again: it subscribes, and before its catch-up has read the new epoch, A appends to
    the new log. That batch (seq 4 of the new log) is no sequel of the old log's seq 3
    and is not handed to the old subscription; the catch-up then ends it as deleted."""
    a, b = pair
    assert isinstance(b, RedisStorage)
    await a.create_session(Session.new("s1"))
    await a.append_events("s1", [(AgentEvent.token("old"), None)] * 3)
    subscription = await b.subscribe("s1", 3)
    listener = b.live.listener
    deliver = listener._deliver
    monkeypatch.setattr(listener, "_deliver", lambda *args: None)  # lost
    await a.delete_session("s1")
    await a.create_session(Session.new("s1"))
    await a.append_events("s1", [(AgentEvent.token("new"), None)] * 3)
    heard: list[bytes] = []

    def hearing(session_id: str, data: bytes) -> None:
        heard.append(data)
        deliver(session_id, data)

    monkeypatch.setattr(listener, "_deliver", hearing)
    release = asyncio.Event()
    catch_up = listener._on_reconnect

    async def held_catch_up(sessions: Collection[str]) -> None:
        await release.wait()
        await catch_up(sessions)

    monkeypatch.setattr(listener, "_on_reconnect", held_catch_up)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        reconnects = listener.reconnects
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        for _ in range(200):  # subscribed again, the catch-up held
            if listener.reconnects > reconnects and "s1" in listener.subscribed:
                break
            await asyncio.sleep(0.02)
        assert "s1" in listener.subscribed
        await a.append_events("s1", [(AgentEvent.token("new 4"), None)])
        for _ in range(200):
            if heard:
                break
            await asyncio.sleep(0.02)
        assert heard and heard[0][:1] == b"["
        with pytest.raises(TimeoutError):
            batch = await asyncio.wait_for(subscription.next_batch(), 0.3)
            pytest.fail(f"the old subscription was handed {[e.seq for e in batch]}")
        release.set()
        got = [event async for event in _within(subscription, RECV)]
        assert (got, subscription.ended) == ([], "deleted")
    finally:
        await admin.aclose()


async def _within(subscription: Subscription, seconds: float) -> AsyncIterator[StoredEvent]:
    async with asyncio.timeout(seconds):
        async for event in subscription:
            yield event


async def test_unsubscribes_when_the_last_subscription_closes(
    url: Callable[..., str], redis_server: RedisServer
) -> None:
    store = await open_storage(url())
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await store.create_session(Session.new("s1"))
        first, second = await store.subscribe("s1", 0), await store.subscribe("s1", 0)
        channels = await _channels(admin)
        assert any(b"s1" in channel for channel in channels)
        first.close()
        await asyncio.sleep(0.1)
        assert await _channels(admin) == channels
        second.close()
        for _ in range(50):
            if not any(b"s1" in channel for channel in await _channels(admin)):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the channel is still subscribed")
    finally:
        await admin.aclose()
        await store.close()


async def _channels(admin: redis.asyncio.Redis) -> list[bytes]:
    sharded = await admin.execute_command("PUBSUB", "SHARDCHANNELS")
    classic = await admin.execute_command("PUBSUB", "CHANNELS")
    return sorted([*sharded, *classic])


async def test_classic_pubsub_delivers_across_instances(url: Callable[..., str]) -> None:
    a = await open_storage(url(pubsub="classic"))
    b = await open_storage(url(pubsub="classic"))
    try:
        await a.create_session(Session.new("s1"))
        subscription = await b.subscribe("s1", 0)
        await a.append_events("s1", [(AgentEvent.token("x"), None)] * 3)
        assert await collect(subscription, 3) == [1, 2, 3]
    finally:
        await a.close()
        await b.close()


async def test_two_instances_appending_at_once_stay_within_the_session_cap(
    url: Callable[..., str],
) -> None:
    """The cap on a session's stored bytes is checked inside append.lua: instances
    racing to fill one session never take it past the cap together."""
    cap = 10_000
    a = cast(RedisStorage, await open_storage(url(), max_session_bytes=cap))
    b = await open_storage(url(), max_session_bytes=cap)
    try:
        await a.create_session(Session.new("s1"))
        event = AgentEvent.token("x" * 200)

        async def fill(store: Storage) -> int:
            stored = 0
            with contextlib.suppress(SessionFull):
                while True:
                    await store.append_event("s1", event)
                    stored += 1
            return stored

        counts = await asyncio.gather(fill(a), fill(b), fill(a), fill(b))
        meta = await b.get_metadata("s1")
        assert meta is not None
        assert meta.last_seq == sum(counts)
        per_event = stored_size(encode_event(event), None)
        assert meta.stored_bytes == per_event * meta.last_seq
        assert cap - per_event < meta.stored_bytes <= cap
        # A hash stored before the count existed counts from 0.
        await a.redis.call("HDEL", a.layout.meta("s1"), "bytes")
        assert await a.append_event("s1", event) == Appended(meta.last_seq + 1)
        again = await b.get_metadata("s1")
        assert again is not None and again.stored_bytes == per_event
    finally:
        await a.close()
        await b.close()
