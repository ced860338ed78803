"""A store one process holds (memory, JSONL, SQLite) never stamps a time behind one it
holds (persistence/clock.py), whatever its wall clock does: a clock set back an hour
(or a machine that boots before NTP has set it) left the session active right now
behind sessions quiet for that hour in a listing by ``updated_at``, with its
``last_activity_at`` and ``expires_at`` moved back, and an event's ``ts`` before the one
it follows (bench/clock_jump.py).

The times an hour ahead of this machine's clock are what a clock an hour ahead left in
the store: imported as given (the storage's ``import_metadata``), or there at the
store's open. Real stores in temp dirs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, SortBy, SortOrder, Storage
from bamboo_session.protocol import Token
from bamboo_session.protocol.models import Session, SessionState, utcnow

KINDS = ("memory", "jsonl", "sqlite")
HOUR = timedelta(hours=1)


def url_of(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}"
    return "memory://" if kind == "memory" else f"jsonl://{directory / 'data'}"


async def stamped_an_hour_ahead(storage: Storage, session_id: str) -> None:
    """A session active, its times an hour ahead of this machine's clock."""
    await storage.create_session(Session.new(session_id, user_id="u", ttl=7200))
    await storage.update_session_state(session_id, SessionState.ACTIVE)
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None
    metadata.updated_at = metadata.last_activity_at = utcnow() + HOUR
    metadata.expires_at = metadata.last_activity_at + timedelta(seconds=7200)
    await storage.import_metadata(metadata)


async def assert_written_after(storage: Storage, earlier: str, later: str) -> None:
    """``later``, written now, is listed first by ``updated_at``, and none of its
    times or its events' is behind ``earlier``'s."""
    first = await storage.get_metadata(earlier)
    assert first is not None
    await storage.touch(later)
    await storage.append_events(later, [(Token(content="x"), None)])
    await storage.update_session_state(later, SessionState.IDLE)
    second = await storage.get_metadata(later)
    assert second is not None and first.expires_at is not None
    assert second.last_activity_at > first.last_activity_at
    assert second.updated_at > first.updated_at
    assert second.expires_at >= first.expires_at
    (event,) = await storage.read_events(later)
    assert event.ts > first.last_activity_at
    query = SessionFilter(sort_by=SortBy.UPDATED_AT, sort_order=SortOrder.DESC, limit=10)
    assert [m.id for m in (await storage.list_sessions(query)).sessions] == [later, earlier]


@pytest.mark.parametrize("kind", KINDS)
async def test_times_written_after_the_clock_went_back_are_not_behind_those_stored(
    kind: str, tmp_path: Path
) -> None:
    storage = await open_storage(url_of(kind, tmp_path), cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before")
        await storage.create_session(Session.new("after", user_id="u", ttl=7200))
        await assert_written_after(storage, "before", "after")
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_store_opened_with_its_clock_behind_the_times_it_holds_stamps_after_them(
    kind: str, tmp_path: Path
) -> None:
    """The times found at the open count: the machine came back with its clock behind."""
    url = url_of(kind, tmp_path)
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before")
        await storage.create_session(Session.new("after", user_id="u", ttl=7200))
    finally:
        await storage.close()
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await assert_written_after(storage, "before", "after")
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_session_made_by_a_clock_behind_the_store_gets_the_stores_times(
    kind: str, tmp_path: Path
) -> None:
    """Its creator stamped it with a time behind what the store holds: the store's times
    take its place (its ``created_at`` stays the creator's)."""
    storage = await open_storage(url_of(kind, tmp_path), cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before")
        session = Session.new("made", user_id="u", ttl=60)
        await storage.create_session(session)
        made, before = await storage.get_metadata("made"), await storage.get_metadata("before")
        assert made is not None and before is not None and made.expires_at is not None
        assert made.created_at == session.metadata.created_at
        assert made.updated_at > before.updated_at
        assert made.expires_at == made.last_activity_at + timedelta(seconds=60)
        assert not made.is_expired(storage.now())
    finally:
        await storage.close()
