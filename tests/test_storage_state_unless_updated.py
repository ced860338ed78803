"""The storage contract's conditional state write, on every backend of
tests/storage_backends.py: ``update_session_state(..., unless_updated_since=T)``, T the
``updated_at`` its caller read, moves the session only if nothing wrote it since. After
activity (a touch, an append) or another writer's state, the session is left exactly as
it is, and its metadata returned: the state tells the caller. Errors come first, as
without the condition; a close or an expiry takes none (ValueError). The read and the
write may be a restart apart: the condition holds on what the store kept. What a
server's peers see of it: tests/test_server_instances_idle_window.py."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from bamboo_session.persistence import InvalidTransition, SessionNotFound, Storage
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.protocol.models import SessionMetadata, SessionState
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens

TTL = 3600
IDLE = SessionState.IDLE


def kept(meta: SessionMetadata | None) -> tuple[object, ...]:
    """What a state write or activity moves."""
    assert meta is not None
    return (meta.state, meta.updated_at, meta.last_activity_at, meta.expires_at, meta.last_seq)


async def read(store: Storage) -> SessionMetadata:
    meta = await store.get_metadata("s1")
    assert meta is not None
    return meta


async def later() -> None:
    """Enough time for a write's times to differ from the ones before it."""
    await asyncio.sleep(0.02)


async def test_a_session_written_by_nothing_since_the_read_moves(store: Storage) -> None:
    await new_session(store, "s1", ttl=TTL)
    looked = await read(store)
    await later()
    moved = await store.update_session_state("s1", IDLE, unless_updated_since=looked.updated_at)
    assert moved.state == IDLE
    assert moved.updated_at > looked.updated_at
    assert kept(await read(store)) == kept(moved)
    # The time the move wrote is the one a later read gives: a second condition holds.
    again = await read(store)
    await later()
    back = SessionState.ACTIVE
    moved = await store.update_session_state("s1", back, unless_updated_since=again.updated_at)
    assert moved.state == back


@pytest.mark.parametrize("activity", ["touch", "append"])
async def test_activity_since_the_read_leaves_the_session_as_it_is(
    store: Storage, activity: str
) -> None:
    await new_session(store, "s1", ttl=TTL)
    looked = await read(store)
    await later()
    if activity == "touch":
        await store.touch("s1")
    else:
        await store.append_events("s1", tokens("a"))
    after = kept(await read(store))
    assert after[1] != looked.updated_at
    await later()
    left = await store.update_session_state("s1", IDLE, unless_updated_since=looked.updated_at)
    assert left.state == SessionState.ACTIVE
    assert kept(left) == after
    assert kept(await read(store)) == after
    # Without the condition, as before: moved.
    assert (await store.update_session_state("s1", IDLE)).state == IDLE


async def test_another_writers_state_since_the_read_is_left_as_it_is(store: Storage) -> None:
    await new_session(store, "s1", ttl=TTL)
    looked = await read(store)
    await later()
    await store.update_session_state("s1", SessionState.DISCONNECTED)
    after = kept(await read(store))
    await later()
    left = await store.update_session_state("s1", IDLE, unless_updated_since=looked.updated_at)
    assert left.state == SessionState.DISCONNECTED
    assert kept(await read(store)) == after


async def test_errors_come_first_and_a_final_state_takes_no_condition(store: Storage) -> None:
    await new_session(store, "s1", ttl=TTL)
    looked = await read(store)
    earlier = looked.updated_at - timedelta(seconds=1)
    with pytest.raises(SessionNotFound):
        await store.update_session_state("missing", IDLE, unless_updated_since=earlier)
    with pytest.raises(SessionNotFound):
        await store.update_session_state("s1", IDLE, epoch="other", unless_updated_since=earlier)
    for final in (SessionState.CLOSED, SessionState.EXPIRED):
        with pytest.raises(ValueError, match="no condition"):
            await store.update_session_state("s1", final, unless_updated_since=looked.updated_at)
    assert kept(await read(store)) == kept(looked)
    await store.update_session_state("s1", SessionState.CLOSED)
    with pytest.raises(InvalidTransition):  # as without the condition, written since or not
        await store.update_session_state("s1", IDLE, unless_updated_since=earlier)


async def test_the_condition_holds_across_a_restart(backend: Backend, tmp_path: Path) -> None:
    """A store opened again reads the times it kept (text in SQLite, microseconds in
    Redis, JSON in a JSONL checkpoint): the ``updated_at`` it gives matches what it
    holds, to the microsecond, or a look's idle would never be written."""
    if not backend.durable:
        pytest.skip("the store keeps nothing across a restart")
    store = await backend.open(tmp_path)
    try:
        await new_session(store, "s1", ttl=TTL)
        await store.append_events("s1", tokens("a"))
        await store.update_session_state("s1", SessionState.DISCONNECTED)
    finally:
        await store.close()
    store = await backend.open(tmp_path)
    try:
        looked = await read(store)
        moved = await store.update_session_state("s1", IDLE, unless_updated_since=looked.updated_at)
        assert moved.state == IDLE
    finally:
        await store.close()


async def test_the_condition_holds_on_times_an_import_wrote(
    backend: Backend, tmp_path: Path
) -> None:
    """A session migrated in keeps its source's times: here an offset of its own (+05:30)
    and a second's last microsecond. The ``updated_at`` read back matches what the store
    holds (microseconds in Redis, UTC text in SQLite, the given datetime in a JSONL
    record and its checkpoint), so a look's idle over it moves, after a reopen too (in
    memory: at once); a time one microsecond off is another."""
    store = await backend.open(tmp_path)
    if not isinstance(store, SessionImport):
        await store.close()
        pytest.skip("this backend does not implement SessionImport")
    try:
        await new_session(store, "s1", ttl=TTL)
        meta = await read(store)
        source = timezone(timedelta(hours=5, minutes=30))
        meta.last_activity_at = datetime(2026, 12, 4, 9, 0, 0, 999_999, tzinfo=source)
        meta.updated_at = meta.last_activity_at + timedelta(microseconds=7)
        meta.expires_at = None
        meta.ttl = None
        await store.import_metadata(meta)
        looked = await read(store)
        assert looked.updated_at == meta.updated_at
        shifted = looked.updated_at + timedelta(microseconds=1)
        left = await store.update_session_state("s1", IDLE, unless_updated_since=shifted)
        assert left.state == SessionState.ACTIVE
        if not backend.durable:
            moved = await store.update_session_state(
                "s1", IDLE, unless_updated_since=looked.updated_at
            )
            assert moved.state == IDLE
            return
    finally:
        await store.close()
    store = await backend.open(tmp_path)
    try:
        looked = await read(store)
        moved = await store.update_session_state("s1", IDLE, unless_updated_since=looked.updated_at)
        assert moved.state == IDLE
    finally:
        await store.close()
