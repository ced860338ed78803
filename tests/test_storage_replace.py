"""The storage contract's ``create_session(..., replace_expired=True)`` on every backend
of tests/storage_backends.py: an expired session counts as missing, and the new one
takes its place whole (its own epoch, an empty log, history and key window, its own
owner in the index), atomically: two such creates of one id make one session (on
Redis, from two storage instances too), the old session's subscriptions end, and a
reopened store holds the new session alone. A session that has not expired is never
replaced. (The crash of a JSONL or SQLite store in the middle: tests/test_crash.py.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    SessionExists,
    SessionExpired,
    SessionFilter,
    Storage,
    StorageFull,
)
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens


async def expired_session(store: Storage, session_id: str = "s1") -> Session:
    """A session with events, a message and a key, whose TTL has run out."""
    old = await new_session(store, session_id, user_id="u1", title="Old", ttl=1)
    await store.append_events(session_id, tokens("a", "b"))
    await store.append_event(session_id, AgentEvent.token("keyed"), key="k1")
    await store.append_message(session_id, Message.user("hi"))
    # Its metadata read until it says expired (a read is no activity): a second after
    # the last append, not a fixed 1.1 s.
    deadline = asyncio.get_running_loop().time() + 5.0
    while not (meta := await store.get_metadata(session_id)) or not meta.is_expired():
        assert asyncio.get_running_loop().time() < deadline, f"{session_id} never expired"
        await asyncio.sleep(0.02)
    with pytest.raises(SessionExpired):
        await store.touch(session_id)
    return old


async def assert_is_new(store: Storage, new: Session, old: Session) -> None:
    session_id = new.id
    meta = await store.get_metadata(session_id)
    assert meta is not None and not meta.is_expired()
    assert meta.epoch == new.metadata.epoch != old.metadata.epoch
    assert await store.epoch(session_id) == new.metadata.epoch
    assert (meta.user_id, meta.title, meta.state) == (new.metadata.user_id, "New", "active")
    assert (meta.last_seq, meta.message_count) == (0, 0)
    assert await store.last_seq(session_id) == 0
    assert await store.read_events(session_id) == []
    assert await store.get_session_history(session_id) == []
    # The old key window went with the old log: the same key is a fresh append.
    appended = await store.append_event(session_id, AgentEvent.token("new"), key="k1")
    assert (appended.seq, appended.duplicate) == (1, False)
    assert [e.event for e in await store.read_events(session_id)] == [AgentEvent.token("new")]


async def test_an_expired_session_is_replaced_whole(store: Storage) -> None:
    old = await expired_session(store)
    new = Session.new("s1", user_id="u2", title="New")
    await store.create_session(new, replace_expired=True)
    await assert_is_new(store, new, old)
    # The index holds the new owner and title, not the old ones.
    assert (await store.list_sessions(SessionFilter(user_id="u1"))).total == 0
    assert [m.id for m in await store.list_user_sessions("u2")] == ["s1"]
    assert (await store.list_sessions(SessionFilter(title_contains="Old"))).total == 0
    assert await store.cleanup_expired_sessions() == 0
    assert await store.get_metadata("s1") is not None


async def test_a_session_in_state_expired_is_replaced(store: Storage) -> None:
    old = await new_session(store, "s1", user_id="u1")
    await store.append_events("s1", tokens("a"))
    await store.update_session_state("s1", SessionState.EXPIRED)
    new = Session.new("s1", user_id="u1", title="New")
    await store.create_session(new, replace_expired=True)
    await assert_is_new(store, new, old)
    assert (await store.list_sessions(SessionFilter(state=SessionState.EXPIRED))).total == 0


async def test_only_an_expired_session_is_replaced(store: Storage) -> None:
    await new_session(store, "live", ttl=3600)
    await new_session(store, "closed")
    await store.update_session_state("closed", SessionState.CLOSED)
    await expired_session(store, "old")
    for session_id in ("live", "closed"):
        before = await store.get_metadata(session_id)
        with pytest.raises(SessionExists):
            await store.create_session(Session.new(session_id), replace_expired=True)
        assert await store.get_metadata(session_id) == before
    # Without replace_expired, an expired session still exists.
    with pytest.raises(SessionExists):
        await store.create_session(Session.new("old"))
    meta = await store.get_metadata("old")
    assert meta is not None and meta.last_seq == 4


async def test_two_creates_of_one_expired_id_make_one_session(
    backend: Backend, store: Storage, tmp_path: Path
) -> None:
    await expired_session(store)
    # On Redis the second create comes from another storage instance (another server).
    other = await backend.open(tmp_path) if backend.name == "redis" else store
    try:
        first, second = Session.new("s1", title="New"), Session.new("s1", title="New")
        outcomes = await asyncio.gather(
            store.create_session(first, replace_expired=True),
            other.create_session(second, replace_expired=True),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], SessionExists), outcomes
        winner = first if outcomes[0] is None else second
        for each in (store, other):
            assert await each.epoch("s1") == winner.metadata.epoch
            assert await each.read_events("s1") == []
    finally:
        if other is not store:
            await other.close()


async def test_the_old_sessions_subscription_ends(store: Storage) -> None:
    await expired_session(store)
    subscription = await store.subscribe("s1", 4)
    await store.create_session(Session.new("s1", title="New"), replace_expired=True)
    await store.append_events("s1", tokens("x", "y", "z", "w", "v"))
    assert await asyncio.wait_for(subscription.next_batch(), 5) == []
    assert subscription.ended == "deleted"


async def test_a_full_store_replaces_an_expired_session(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path, max_sessions=1)
    try:
        old = await expired_session(storage)
        new = Session.new("s1", user_id="u2", title="New")
        await storage.create_session(new, replace_expired=True)
        await assert_is_new(storage, new, old)
        with pytest.raises(StorageFull):
            await new_session(storage, "other")
    finally:
        await storage.close()


async def test_a_reopened_store_holds_the_new_session(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip("nothing survives a reopen")
    storage = await backend.open(tmp_path)
    try:
        old = await expired_session(storage)
        new = Session.new("s1", user_id="u2", title="New")
        await storage.create_session(new, replace_expired=True)
    finally:
        await storage.close()
    storage = await backend.open(tmp_path)
    try:
        await assert_is_new(storage, new, old)
    finally:
        await storage.close()
