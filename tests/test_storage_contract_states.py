"""The storage contract's states, activity and expiry (persistence/base.py), on every
backend of tests/storage_backends.py: state changes follow the table, closed survives a
reopen, a touch or an append slides the expiry (not a closed session's), expired
sessions refuse and are cleaned up, and the default TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import InvalidTransition, SessionClosed, SessionExpired, Storage
from bamboo_session.protocol.models import AgentEvent, SessionState
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session


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
