"""The storage contract (persistence/base.py), on every backend of tests/storage_backends.py:
every method, every error, idempotency across a reopen, and live subscriptions with no
gap and no duplicate under concurrent appends. A last section holds SessionImport to
its word on the backends that implement it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import msgspec
import pytest

from bamboo_session.persistence import (
    KEY_WINDOW,
    Appended,
    InvalidSessionId,
    InvalidTransition,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionNotFound,
    SortBy,
    SortOrder,
    Storage,
    StorageFull,
)
from bamboo_session.persistence.base import SessionImport
from bamboo_session.protocol.models import (
    AgentEvent,
    AnyAgentEvent,
    Message,
    MessageEvent,
    Role,
    Session,
    SessionState,
    StoredEvent,
    Token,
    utcnow,
)
from tests.storage_backends import BACKENDS, Backend

RECV = 5.0


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    chosen: Backend = request.param
    return chosen.bound(request)


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Storage]:
    storage = await backend.open(tmp_path)
    try:
        yield storage
    finally:
        await storage.close()


async def new_session(store: Storage, session_id: str = "s1", **fields: object) -> Session:
    session = Session.new(session_id, **fields)  # type: ignore[arg-type]
    await store.create_session(session)
    return session


def tokens(*texts: str) -> list[tuple[Token, str | None]]:
    return [(AgentEvent.token(text), None) for text in texts]


# -- sessions ---------------------------------------------------------------------


async def test_create_then_read_back(store: Storage) -> None:
    session = await new_session(store, "s1", user_id="u1", title="Chat")
    meta = await store.get_metadata("s1")
    assert meta is not None
    assert (meta.id, meta.user_id, meta.title, meta.state) == ("s1", "u1", "Chat", "active")
    assert (meta.last_seq, meta.message_count, meta.epoch) == (0, 0, session.metadata.epoch)
    loaded = await store.load_session("s1")
    assert loaded is not None and loaded.messages == []
    assert await store.last_seq("s1") == 0
    assert await store.epoch("s1") == session.metadata.epoch


async def test_create_refuses_a_duplicate_and_a_bad_id(store: Storage) -> None:
    await new_session(store, "s1")
    with pytest.raises(SessionExists):
        await new_session(store, "s1")
    for bad in ("", ".", "..", "a/b", "x" * 129, "sp ace"):
        with pytest.raises(InvalidSessionId):
            await store.create_session(Session.new(bad))


async def test_create_with_messages_puts_them_in_the_log(store: Storage) -> None:
    session = Session.new("s1")
    session.messages = [Message.user("a"), Message.assistant("b")]
    await store.create_session(session)
    history = await store.get_session_history("s1")
    assert [m.content for m in history] == ["a", "b"]
    events = await store.read_events("s1")
    assert [e.seq for e in events] == [1, 2]
    assert all(isinstance(e.event, MessageEvent) for e in events)


async def test_max_sessions(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path, max_sessions=2)
    try:
        await new_session(storage, "a")
        await new_session(storage, "b")
        with pytest.raises(StorageFull):
            await new_session(storage, "c")
        await storage.delete_session("a")
        await new_session(storage, "c")
    finally:
        await storage.close()


async def test_missing_sessions(store: Storage) -> None:
    assert await store.get_metadata("nope") is None
    assert await store.load_session("nope") is None
    for call in (
        store.get_session_history("nope"),
        store.get_history_page("nope", 10),
        store.read_events("nope"),
        store.append_event("nope", AgentEvent.token("x")),
        store.update_session_state("nope", SessionState.IDLE),
        store.touch("nope"),
        store.delete_session("nope"),
        store.last_seq("nope"),
        store.subscribe("nope", 0),
    ):
        with pytest.raises(SessionNotFound):
            await call


async def test_delete_removes_everything(store: Storage) -> None:
    await new_session(store, "s1", user_id="u")
    await store.append_events("s1", tokens("a", "b"))
    await store.delete_session("s1")
    assert await store.get_metadata("s1") is None
    assert await store.list_user_sessions("u") == []
    with pytest.raises(SessionNotFound):
        await store.read_events("s1")
    # The id is free again, with a new log from seq 1.
    await new_session(store, "s1")
    assert (await store.append_event("s1", AgentEvent.token("c"))).seq == 1


# -- appends ------------------------------------------------------------------------


async def test_seqs_count_from_one_without_gaps(store: Storage) -> None:
    await new_session(store)
    assert await store.append_event("s1", AgentEvent.token("a")) == Appended(1)
    assert await store.append_events("s1", tokens("b", "c")) == [Appended(2), Appended(3)]
    assert await store.append_events("s1", []) == []
    events = await store.read_events("s1")
    assert [(e.seq, e.event) for e in events] == [
        (1, Token("a")),
        (2, Token("b")),
        (3, Token("c")),
    ]
    meta = await store.get_metadata("s1")
    assert meta is not None and meta.last_seq == 3


async def test_concurrent_appends_to_one_session(store: Storage) -> None:
    await new_session(store)

    async def writer(name: str) -> list[int]:
        seqs = []
        for i in range(20):
            done = await store.append_events("s1", tokens(f"{name}{i}", f"{name}{i}'"))
            seqs.extend(a.seq for a in done)
        return seqs

    results = await asyncio.gather(*(writer(n) for n in "abcde"))
    every = sorted(seq for seqs in results for seq in seqs)
    assert every == list(range(1, 201))
    for seqs in results:
        assert seqs == sorted(seqs)  # each writer's appends in its call order
    events = await store.read_events("s1")
    assert [e.seq for e in events] == list(range(1, 201))


async def test_messages_are_events_and_history(store: Storage) -> None:
    await new_session(store)
    first = await store.append_message("s1", Message(role=Role.USER, content="hi"))
    await store.append_event("s1", AgentEvent.token("tok"))
    await store.append_event("s1", AgentEvent.message(Message.assistant("yo")))
    assert first == Appended(1)
    history = await store.get_session_history("s1")
    assert [m.content for m in history] == ["hi", "yo"]
    assert history[0].id and history[0].created_at is not None  # filled in by the store
    events = await store.read_events("s1")
    assert isinstance(events[0].event, MessageEvent)
    assert events[0].event.message.id == history[0].id
    meta = await store.get_metadata("s1")
    assert meta is not None and meta.message_count == 2


async def test_history_pages(store: Storage) -> None:
    await new_session(store)
    for i in range(7):
        await store.append_message("s1", Message.user(f"m{i}"))
        await store.append_event("s1", AgentEvent.token("between"))
    page = await store.get_history_page("s1", 3)
    assert ([m.content for m in page.messages], page.start, page.has_more) == (
        ["m4", "m5", "m6"],
        4,
        True,
    )
    page = await store.get_history_page("s1", 3, before=2)
    assert ([m.content for m in page.messages], page.start, page.has_more) == (
        ["m0", "m1"],
        0,
        False,
    )
    page = await store.get_history_page("s1", 100, before=100)
    assert len(page.messages) == 7 and not page.has_more


async def test_read_events_pages_by_count_and_bytes(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens(*(f"{i:04d}" + "x" * 100 for i in range(10))))
    assert [e.seq for e in await store.read_events("s1", after_seq=3, limit=4)] == [4, 5, 6, 7]
    assert await store.read_events("s1", after_seq=10) == []
    assert await store.read_events("s1", after_seq=99) == []
    size = (await store.read_events("s1", limit=1))[0].size
    page = await store.read_events("s1", max_bytes=size * 3)
    assert [e.seq for e in page] == [1, 2, 3]
    # A page always holds at least one event, however small the budget.
    assert [e.seq for e in await store.read_events("s1", after_seq=5, max_bytes=1)] == [6]


# -- idempotency --------------------------------------------------------------------------


async def test_a_key_seen_again_is_a_duplicate_of_its_first_seq(store: Storage) -> None:
    await new_session(store)
    assert await store.append_event("s1", AgentEvent.token("a"), "k1") == Appended(1)
    assert await store.append_event("s1", AgentEvent.token("b")) == Appended(2)
    again = await store.append_event("s1", AgentEvent.token("a again"), "k1")
    assert again == Appended(1, duplicate=True)
    assert await store.last_seq("s1") == 2
    events = await store.read_events("s1")
    assert [(e.seq, e.key) for e in events] == [(1, "k1"), (2, None)]


async def test_duplicates_within_one_batch(store: Storage) -> None:
    await new_session(store)
    items = [
        (AgentEvent.token("a"), "k"),
        (AgentEvent.token("b"), None),
        (AgentEvent.token("a'"), "k"),
        (AgentEvent.token("c"), "j"),
    ]
    assert await store.append_events("s1", items) == [
        Appended(1),
        Appended(2),
        Appended(1, duplicate=True),
        Appended(3),
    ]
    assert await store.append_message("s1", Message.user("m"), "j") == Appended(3, True)
    assert await store.last_seq("s1") == 3


async def test_keys_are_per_session(store: Storage) -> None:
    await new_session(store, "a")
    await new_session(store, "b")
    assert await store.append_event("a", AgentEvent.token("x"), "k") == Appended(1)
    assert await store.append_event("b", AgentEvent.token("x"), "k") == Appended(1)


async def test_a_key_is_forgotten_after_the_window(store: Storage) -> None:
    await new_session(store)
    await store.append_event("s1", AgentEvent.token("first"), "k")
    filler = tokens(*(["f"] * 1000))
    for _ in range(KEY_WINDOW // 1000 - 1):
        await store.append_events("s1", filler)
    await store.append_events("s1", tokens(*(["f"] * 999)))
    # 10,000 appends so far: the next one is the 10,000th after the key's, still in it.
    assert await store.append_event("s1", AgentEvent.token("x"), "k") == Appended(1, True)
    await store.append_event("s1", AgentEvent.token("f"))
    # Now the key's append is more than 10,000 appends back: it is new again.
    assert await store.append_event("s1", AgentEvent.token("x"), "k") == Appended(10_002)


async def test_keys_survive_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    await new_session(storage)
    await storage.append_events(
        "s1", [(AgentEvent.token("a"), "k1"), (AgentEvent.token("b"), "k2")]
    )
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        assert await storage.append_event("s1", AgentEvent.token("b"), "k2") == Appended(2, True)
        assert await storage.append_event("s1", AgentEvent.token("a"), "k1") == Appended(1, True)
        assert await storage.append_event("s1", AgentEvent.token("c"), "k3") == Appended(3)
        assert [e.key for e in await storage.read_events("s1")] == ["k1", "k2", "k3"]
    finally:
        await storage.close()


async def test_an_empty_key_is_a_key(store: Storage) -> None:
    # PROTOCOL.md: a key is a string, "" included; only None is no key.
    await new_session(store)
    items = [
        (AgentEvent.token("a"), ""),
        (AgentEvent.token("b"), None),
        (AgentEvent.token("a again"), ""),
    ]
    assert await store.append_events("s1", items) == [Appended(1), Appended(2), Appended(1, True)]
    assert await store.append_event("s1", AgentEvent.token("a"), "") == Appended(1, True)
    assert await store.append_message("s1", Message.user("m"), "") == Appended(1, True)
    assert await store.append_event("s1", AgentEvent.token("c")) == Appended(3)
    events = await store.read_events("s1")
    assert [(e.seq, e.key) for e in events] == [(1, ""), (2, None), (3, None)]


async def test_an_empty_key_survives_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    await new_session(storage)
    await storage.append_events("s1", [(AgentEvent.token("a"), ""), (AgentEvent.token("b"), None)])
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        assert await storage.append_event("s1", AgentEvent.token("a"), "") == Appended(1, True)
        retried = [(AgentEvent.token("a"), ""), (AgentEvent.token("c"), None)]
        assert await storage.append_events("s1", retried) == [Appended(1, True), Appended(3)]
        assert [e.key for e in await storage.read_events("s1")] == ["", None, None]
    finally:
        await storage.close()


# -- states, activity and expiry ----------------------------------------------------------------


async def test_state_changes_follow_the_table(store: Storage) -> None:
    await new_session(store)
    meta = await store.update_session_state("s1", SessionState.IDLE)
    assert meta.state == SessionState.IDLE
    assert (await store.get_metadata("s1")).state == SessionState.IDLE  # type: ignore[union-attr]
    await store.update_session_state("s1", SessionState.CLOSED)
    with pytest.raises(InvalidTransition):
        await store.update_session_state("s1", SessionState.ACTIVE)
    with pytest.raises(SessionClosed):
        await store.append_event("s1", AgentEvent.token("late"))
    assert await store.get_session_history("s1") == []  # still readable


async def test_closed_survives_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    await new_session(storage)
    await storage.append_event("s1", AgentEvent.token("a"))
    await storage.update_session_state("s1", SessionState.CLOSED)
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        meta = await storage.get_metadata("s1")
        assert meta is not None and meta.state == SessionState.CLOSED and meta.last_seq == 1
    finally:
        await storage.close()


async def test_touch_slides_the_expiry(store: Storage) -> None:
    await new_session(store, ttl=3600)
    before = await store.get_metadata("s1")
    assert before is not None and before.expires_at is not None
    await asyncio.sleep(0.01)
    await store.touch("s1")
    after = await store.get_metadata("s1")
    assert after is not None and after.expires_at is not None
    assert after.last_activity_at > before.last_activity_at
    assert after.expires_at == after.last_activity_at + timedelta(seconds=3600)


async def test_touch_leaves_a_closed_session_as_it_closed(store: Storage) -> None:
    # A closed session has no activity: a touch that reaches it (a request that raced
    # with its close, on another process of a shared store) must not push its expiry
    # back. Its TTL runs from the close. A live one is still touched.
    await new_session(store, "closed", ttl=3600)
    await new_session(store, "open", ttl=3600)
    await store.update_session_state("closed", SessionState.CLOSED)
    closed = await store.get_metadata("closed")
    open_ = await store.get_metadata("open")
    assert closed is not None and closed.expires_at is not None
    assert open_ is not None
    await asyncio.sleep(0.01)
    await store.touch("closed")
    await store.touch("open")
    after = await store.get_metadata("closed")
    assert after is not None and after.state == SessionState.CLOSED
    assert (after.last_activity_at, after.expires_at) == (
        closed.last_activity_at,
        closed.expires_at,
    )
    after_open = await store.get_metadata("open")
    assert after_open is not None and after_open.expires_at is not None
    assert after_open.last_activity_at > open_.last_activity_at
    assert after_open.expires_at == after_open.last_activity_at + timedelta(seconds=3600)


async def test_a_touch_does_not_put_off_a_closed_sessions_expiry(store: Storage) -> None:
    # Touched after its close, a closed session still expires one TTL after its last
    # activity, and cleanup removes it; a touch once it expired is SessionExpired.
    await new_session(store, "s1", ttl=1)
    await store.update_session_state("s1", SessionState.CLOSED)
    await asyncio.sleep(0.6)
    with contextlib.suppress(SessionExpired):  # a slow machine's sleep overran the TTL
        await store.touch("s1")
    await asyncio.sleep(0.6)
    with pytest.raises(SessionExpired):
        await store.touch("s1")
    assert await store.cleanup_expired_sessions() == 1
    assert await store.get_metadata("s1") is None


async def test_an_append_is_activity(store: Storage) -> None:
    await new_session(store, ttl=3600)
    before = await store.get_metadata("s1")
    await asyncio.sleep(0.01)
    await store.append_event("s1", AgentEvent.token("a"))
    after = await store.get_metadata("s1")
    assert before is not None and after is not None
    assert after.last_activity_at > before.last_activity_at


async def test_expired_sessions_refuse_and_are_cleaned_up(store: Storage) -> None:
    await new_session(store, "old", ttl=1)
    await new_session(store, "young", ttl=3600)
    await new_session(store, "forever")
    await store.append_event("old", AgentEvent.token("a"))
    await asyncio.sleep(1.1)
    with pytest.raises(SessionExpired):
        await store.append_event("old", AgentEvent.token("b"))
    with pytest.raises(SessionExpired):
        await store.touch("old")
    with pytest.raises(SessionExpired):
        await store.load_session("old")
    with pytest.raises(SessionExpired):
        await store.get_session_history("old")
    assert await store.cleanup_expired_sessions() == 1
    assert await store.get_metadata("old") is None
    assert await store.get_metadata("young") is not None
    assert await store.get_metadata("forever") is not None
    assert await store.cleanup_expired_sessions() == 0


async def test_default_ttl(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path, default_ttl=60)
    try:
        await new_session(storage, "a")
        await new_session(storage, "b", ttl=5)
        a, b = await storage.get_metadata("a"), await storage.get_metadata("b")
        assert a is not None and a.ttl == 60 and a.expires_at is not None
        assert b is not None and b.ttl == 5
    finally:
        await storage.close()


# -- listing ------------------------------------------------------------------------------


async def test_list_sessions_filters_sorts_and_pages(store: Storage) -> None:
    for i in range(6):
        await new_session(store, f"s{i}", user_id="u1" if i % 2 else "u2", title=f"Chat {i}")
        await asyncio.sleep(0.002)
    await store.update_session_state("s3", SessionState.IDLE)
    result = await store.list_sessions(SessionFilter(user_id="u1"))
    assert [m.id for m in result.sessions] == ["s5", "s3", "s1"]
    assert result.total == 3
    result = await store.list_sessions(
        SessionFilter(sort_by=SortBy.CREATED_AT, sort_order=SortOrder.ASC, limit=2, offset=1)
    )
    assert [m.id for m in result.sessions] == ["s1", "s2"]
    assert (result.total, result.offset, result.limit) == (6, 1, 2)
    result = await store.list_sessions(SessionFilter(state=SessionState.IDLE))
    assert [m.id for m in result.sessions] == ["s3"]
    result = await store.list_sessions(SessionFilter(title_contains="Chat 4"))
    assert [m.id for m in result.sessions] == ["s4"]
    s2 = await store.get_metadata("s2")
    assert s2 is not None
    result = await store.list_sessions(
        SessionFilter(created_after=s2.created_at, sort_order=SortOrder.ASC)
    )
    assert [m.id for m in result.sessions] == ["s2", "s3", "s4", "s5"]
    result = await store.list_sessions(SessionFilter(created_before=s2.created_at))
    assert {m.id for m in result.sessions} == {"s0", "s1"}
    mine = await store.list_user_sessions("u2")
    assert [m.id for m in mine] == ["s4", "s2", "s0"]


async def test_list_sorts_by_message_count_and_activity(store: Storage) -> None:
    for name, count in (("a", 2), ("b", 0), ("c", 1)):
        await new_session(store, name)
        for _ in range(count):
            await store.append_message(name, Message.user("m"))
    result = await store.list_sessions(SessionFilter(sort_by=SortBy.MESSAGE_COUNT))
    assert [m.id for m in result.sessions] == ["a", "c", "b"]
    await asyncio.sleep(0.01)
    await store.touch("b")
    result = await store.list_sessions(SessionFilter(active_after=utcnow() - timedelta(seconds=5)))
    assert result.total == 3
    result = await store.list_sessions(SessionFilter(sort_by=SortBy.LAST_ACTIVITY_AT, limit=1))
    assert [m.id for m in result.sessions] == ["b"]


# -- subscriptions ------------------------------------------------------------------------


async def test_subscribe_yields_stored_then_live(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens("a", "b", "c"))
    subscription = await store.subscribe("s1", after_seq=1)
    assert subscription.position == 1
    first = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [e.seq for e in first] == [2, 3]
    assert not subscription.ready()
    await store.append_event("s1", AgentEvent.token("d"), "kd")
    assert subscription.ready()
    live = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [(e.seq, e.event, e.key) for e in live] == [(4, Token("d"), "kd")]
    subscription.close()
    assert subscription.ended == "unsubscribed"
    assert await subscription.next_batch() == []


async def test_subscribe_iterates_one_event_at_a_time(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens("a", "b"))
    subscription = await store.subscribe("s1", after_seq=0)
    seen = []
    async for event in subscription:
        seen.append(event.seq)
        if event.seq == 2:
            await store.append_event("s1", AgentEvent.token("c"))
        if event.seq == 3:
            subscription.close()
    assert seen == [1, 2, 3]


async def test_subscriptions_see_concurrent_appends_once_in_order(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens(*"abcdef"))
    subscriptions = [await store.subscribe("s1", after_seq=n) for n in (0, 3, 6)]
    total = 6 + 5 * 40

    async def writer(name: str) -> None:
        for i in range(40):
            await store.append_event("s1", AgentEvent.token(f"{name}{i}"), f"{name}{i}")
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def reader(subscription: object) -> list[int]:
        seqs: list[int] = []
        while not seqs or seqs[-1] < total:
            batch = await subscription.next_batch(limit=17)  # type: ignore[attr-defined]
            assert batch, "the subscription ended early"
            seqs.extend(e.seq for e in batch)
        return seqs

    readers = [asyncio.create_task(reader(s)) for s in subscriptions]
    await asyncio.gather(*(writer(n) for n in "vwxyz"))
    results = await asyncio.wait_for(asyncio.gather(*readers), RECV)
    for start, seqs in zip((0, 3, 6), results, strict=True):
        assert seqs == list(range(start + 1, total + 1))


async def test_on_ready_is_called_when_events_arrive(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    calls: list[bool] = []
    subscription.on_ready(lambda: calls.append(True))
    await store.append_event("s1", AgentEvent.token("a"))
    assert calls
    assert [e.seq for e in await subscription.next_batch()] == [1]
    subscription.close()


async def test_a_closed_session_ends_its_subscriptions_after_its_events(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    await store.append_events("s1", tokens("a", "b"))
    await store.update_session_state("s1", SessionState.CLOSED)
    assert [e.seq for e in await asyncio.wait_for(subscription.next_batch(), RECV)] == [1, 2]
    assert await asyncio.wait_for(subscription.next_batch(), RECV) == []
    assert subscription.ended == "closed"
    # Subscribing to a closed session replays its log, then ends.
    late = await store.subscribe("s1", after_seq=1)
    assert [e.seq for e in await asyncio.wait_for(late.next_batch(), RECV)] == [2]
    assert await asyncio.wait_for(late.next_batch(), RECV) == []


async def test_a_deleted_session_ends_its_subscriptions(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    waiting = asyncio.create_task(subscription.next_batch())
    await asyncio.sleep(0)
    await store.delete_session("s1")
    assert await asyncio.wait_for(waiting, RECV) == []
    assert subscription.ended == "deleted"


async def test_closing_the_store_ends_subscriptions(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path)
    await new_session(storage)
    subscription = await storage.subscribe("s1", after_seq=0)
    waiting = asyncio.create_task(subscription.next_batch())
    await asyncio.sleep(0)
    await storage.close()
    assert await asyncio.wait_for(waiting, RECV) == []
    assert subscription.ended is not None


async def test_a_large_backlog_is_read_in_pages(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    for _ in range(5):  # more than a subscription buffers: the rest comes from the store
        await store.append_events("s1", tokens(*(["x" * 1000] * 1000)))
    seqs: list[int] = []
    while len(seqs) < 5000:
        batch = await asyncio.wait_for(subscription.next_batch(limit=700), RECV)
        assert 0 < len(batch) <= 700
        seqs.extend(e.seq for e in batch)
    assert seqs == list(range(1, 5001))
    subscription.close()


# -- lifecycle ------------------------------------------------------------------------


async def test_reopen_keeps_sessions_events_and_history(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    session = await new_session(storage, "s1", user_id="u", title="T")
    await storage.append_message("s1", Message.user("hello"))
    await storage.append_events("s1", tokens("a", "b"))
    await storage.update_session_state("s1", SessionState.IDLE)
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        meta = await storage.get_metadata("s1")
        assert meta is not None
        assert (meta.user_id, meta.title, meta.last_seq, meta.message_count, meta.epoch) == (
            "u",
            "T",
            3,
            1,
            session.metadata.epoch,
        )
        assert [m.content for m in await storage.get_session_history("s1")] == ["hello"]
        assert [e.seq for e in await storage.read_events("s1")] == [1, 2, 3]
        assert (await storage.append_event("s1", AgentEvent.token("c"))).seq == 4
    finally:
        await storage.close()


async def test_ready_until_closed(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path)
    assert storage.ready
    await storage.close()
    assert not storage.ready
    await storage.close()  # twice is fine


async def test_equal_sort_keys_are_ordered_by_id(store: Storage) -> None:
    for name in ("b", "a", "c"):
        await new_session(store, name)
    by_count = SessionFilter(sort_by=SortBy.MESSAGE_COUNT)
    result = await store.list_sessions(by_count)
    assert [m.id for m in result.sessions] == ["c", "b", "a"]
    by_count.sort_order = SortOrder.ASC
    by_count.limit, by_count.offset = 2, 1
    result = await store.list_sessions(by_count)
    assert [m.id for m in result.sessions] == ["b", "c"]


# == SessionImport: what `bamboo-session migrate` needs, on the backends that have it ==


@pytest.fixture
async def importer(store: Storage) -> SessionImport:
    if not isinstance(store, SessionImport):
        pytest.skip("this backend does not implement SessionImport")
    return store


def carried_over(first_seq: int = 1) -> list[StoredEvent]:
    """Events as another store holds them: their own seqs, times and keys."""
    then = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    hello = Message(role=Role.USER, content="hello", id="m-1", created_at=then)
    events: list[tuple[AnyAgentEvent, str | None]] = [
        (AgentEvent.message(hello), "key-1"),
        (AgentEvent.token("tok"), None),
        (AgentEvent.token("tok 2"), "key-3"),
        (AgentEvent.message(Message.assistant("hi")), None),
    ]
    return [
        StoredEvent(first_seq + i, then + timedelta(seconds=i), event, key)
        for i, (event, key) in enumerate(events)
    ]


async def new_import_target(store: Storage, session_id: str = "s1") -> Session:
    """A session as the source store has it: its own epoch and creation time."""
    session = Session.new(session_id, user_id="u", title="Imported", ttl=3600)
    session.metadata.epoch = "source-epoch"
    session.metadata.created_at = datetime(2025, 1, 2, tzinfo=UTC)
    await store.create_session(session)
    return session


async def test_import_keeps_seqs_times_and_keys(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    given = carried_over()
    await importer.import_events("s1", given)
    events = await store.read_events("s1")
    assert [(e.seq, e.ts, e.key, e.event) for e in events] == [
        (e.seq, e.ts, e.key, e.event) for e in given
    ]
    meta = await store.get_metadata("s1")
    assert meta is not None
    assert (meta.epoch, meta.created_at) == ("source-epoch", datetime(2025, 1, 2, tzinfo=UTC))
    assert (meta.last_seq, meta.message_count) == (4, 2)
    history = await store.get_session_history("s1")
    assert [(m.id, m.content) for m in history] == [("m-1", "hello"), (history[1].id, "hi")]
    page = await store.get_history_page("s1", 1)
    assert [m.content for m in page.messages] == ["hi"] and page.has_more
    # In pieces, each following the last.
    await importer.import_events("s1", carried_over(first_seq=5))
    assert await store.last_seq("s1") == 8


async def test_import_refuses_seqs_out_of_order(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    for wrong in (carried_over(first_seq=2), [carried_over()[0], carried_over()[2]]):
        with pytest.raises(ValueError):
            await importer.import_events("s1", wrong)
        assert await store.last_seq("s1") == 0  # nothing of it was imported
    await store.append_event("s1", AgentEvent.token("appended"))
    with pytest.raises(ValueError):
        await importer.import_events("s1", carried_over(first_seq=1))
    await importer.import_events("s1", carried_over(first_seq=2))
    assert await store.last_seq("s1") == 5


async def test_imported_keys_are_the_sessions_keys(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    await importer.import_events("s1", carried_over())
    again = await store.append_event("s1", AgentEvent.token("retry"), "key-3")
    assert again == Appended(3, duplicate=True)
    assert await store.append_event("s1", AgentEvent.token("new"), "key-5") == Appended(5)


async def test_an_imported_empty_key_stays_a_key(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    then = datetime(2025, 1, 2, tzinfo=UTC)
    given = [
        StoredEvent(1, then, AgentEvent.token("keyed"), ""),
        StoredEvent(2, then, AgentEvent.token("keyless"), None),
    ]
    await importer.import_events("s1", given)
    assert [(e.seq, e.key) for e in await store.read_events("s1")] == [(1, ""), (2, None)]
    assert await store.append_event("s1", AgentEvent.token("retry"), "") == Appended(1, True)


async def test_import_metadata_sets_state_times_ttl_and_extra(importer: SessionImport) -> None:
    store = cast(Storage, importer)
    await new_import_target(store)
    await importer.import_events("s1", carried_over())
    meta = await store.get_metadata("s1")
    assert meta is not None
    active_at = utcnow() - timedelta(minutes=5)
    meta.state = SessionState.CLOSED
    meta.updated_at = active_at + timedelta(seconds=1)
    meta.last_activity_at = active_at
    meta.expires_at = active_at + timedelta(days=7)
    meta.ttl = 7 * 86400
    meta.extra = {"plan": "pro"}
    await importer.import_metadata(meta)
    now = await store.get_metadata("s1")
    assert now is not None
    assert (now.state, now.updated_at, now.last_activity_at) == (
        SessionState.CLOSED,
        active_at + timedelta(seconds=1),
        active_at,
    )
    assert (now.expires_at, now.ttl, now.extra) == (meta.expires_at, 7 * 86400, {"plan": "pro"})
    assert (now.last_seq, now.message_count, now.epoch) == (4, 2, "source-epoch")
    with pytest.raises(SessionClosed):
        await store.append_event("s1", AgentEvent.token("late"))
    assert len(await store.get_session_history("s1")) == 2


async def test_import_into_a_missing_session(importer: SessionImport) -> None:
    with pytest.raises(SessionNotFound):
        await importer.import_events("nope", carried_over())
    with pytest.raises(SessionNotFound):
        await importer.import_metadata(Session.new("nope").metadata)


async def test_an_import_survives_a_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("this backend keeps nothing across a reopen")
    storage = await backend.open(tmp_path)
    if not isinstance(storage, SessionImport):
        await storage.close()
        pytest.skip("this backend does not implement SessionImport")
    await new_import_target(storage)
    await storage.import_events("s1", carried_over())
    meta = await storage.get_metadata("s1")
    assert meta is not None
    meta.state = SessionState.IDLE
    meta.extra = {"from": "elsewhere"}
    await storage.import_metadata(meta)
    await storage.close()
    storage = await backend.open(tmp_path)
    try:
        after = await storage.get_metadata("s1")
        assert after is not None
        assert (after.state, after.extra, after.epoch) == (
            SessionState.IDLE,
            {"from": "elsewhere"},
            "source-epoch",
        )
        events = await storage.read_events("s1")
        assert [(e.seq, e.ts, e.key) for e in events] == [
            (e.seq, e.ts, e.key) for e in carried_over()
        ]
        assert await storage.append_event("s1", AgentEvent.token("x"), "key-1") == Appended(
            1, duplicate=True
        )
    finally:
        await storage.close()


@pytest.mark.parametrize(
    "json", [b'{"type":"token","content":"a\x00b"}', b'{"type":"token"', b'{"type":"nope"}']
)
async def test_import_refuses_an_event_that_does_not_decode_and_imports_nothing(
    importer: SessionImport, json: bytes
) -> None:
    """A damaged source row is refused with ValueError, before anything is stored or
    any key is taken: a later append with the key of an event before it is new."""
    store = cast(Storage, importer)
    await new_import_target(store)
    given = carried_over()
    given[1] = StoredEvent.from_json(2, given[1].ts, msgspec.Raw(json), "key-2")
    with pytest.raises(ValueError, match="seq 2"):
        await importer.import_events("s1", given)
    assert await store.last_seq("s1") == 0
    appended = await store.append_event("s1", AgentEvent.token("new"), key="key-1")
    assert (appended.seq, appended.duplicate) == (1, False)
