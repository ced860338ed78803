"""A store one process holds (memory, JSONL, SQLite) never stamps a time behind one it
holds (persistence/clock.py), whatever its wall clock does: a clock set back an hour
(or a machine that boots before NTP has set it) left the session active right now
behind sessions quiet for that hour in a listing by ``updated_at``, with its
``last_activity_at`` and ``expires_at`` moved back, and an event's ``ts`` before the one
it follows (bench/clock_jump.py).

The times an hour ahead of this machine's clock are what a clock an hour ahead left in
the store: imported as given (the storage's ``import_metadata``), or there at the
store's open. Real stores in temp dirs, and a real server on a store handed in."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter, SortBy, SortOrder, Storage
from bamboo_session.protocol import Token
from bamboo_session.protocol.models import Session, SessionState, utcnow
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.support import attach

KINDS = ("memory", "jsonl", "sqlite")
HOUR = timedelta(hours=1)


def url_of(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite://{directory / 'sessions.db'}"
    return "memory://" if kind == "memory" else f"jsonl://{directory / 'data'}"


async def stamped_an_hour_ahead(
    storage: Storage, session_id: str, state: SessionState | None = None
) -> None:
    """A session active, its times an hour ahead of this machine's clock; or, given
    ``state``, moved to it an hour ahead (its ``updated_at``: a state write is no
    activity), its activity now."""
    await storage.create_session(Session.new(session_id, user_id="u", ttl=7200))
    await storage.update_session_state(session_id, state or SessionState.ACTIVE)
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None
    metadata.updated_at = utcnow() + HOUR
    if state is None:
        metadata.last_activity_at = metadata.updated_at
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
    assert second is not None and second.ttl is not None
    assert second.last_activity_at > first.last_activity_at
    assert second.updated_at > first.updated_at
    assert second.expires_at == second.last_activity_at + timedelta(seconds=second.ttl)
    event = (await storage.read_events(later))[-1]  # the one just appended
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


@pytest.mark.parametrize("state", [SessionState.DISCONNECTED, SessionState.CLOSED])
@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_the_times_of_parked_and_closed_sessions_found_at_the_open_count_too(
    kind: str, state: SessionState, tmp_path: Path
) -> None:
    """A server's stop parks every session it holds (``disconnected``, a state write
    later than any activity), and a close is one too: the newest time a store holds is
    often one of theirs. The SQLite store's open read only the ``updated_at`` of
    sessions ``active`` or ``idle``: a session parked at the stop and attached again
    after a restart with the clock set back had its ``updated_at`` moved back, and was
    listed behind the sessions parked with it."""
    url = url_of(kind, tmp_path)
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before", state)
        await storage.create_session(Session.new("after", user_id="u", ttl=7200))
    finally:
        await storage.close()
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await assert_written_after(storage, "before", "after")
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_session_made_with_times_behind_the_stores_keeps_them_until_its_activity(
    kind: str, tmp_path: Path
) -> None:
    """An embedder may make a session with times of its own, earlier ones included (an
    expired session, for a test of cleanup): they stay as given. Its first activity
    (the server touches a session at the attach that follows its creation) is stamped
    by the store's clock."""
    storage = await open_storage(url_of(kind, tmp_path), cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before")
        session = Session.new("made", user_id="u", ttl=60)
        session.metadata.touch(utcnow() - HOUR)
        await storage.create_session(session)
        made = await storage.get_metadata("made")
        assert made is not None and made.last_activity_at == session.metadata.last_activity_at
        assert made.is_expired(storage.now())
    finally:
        await storage.close()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_session_a_server_makes_after_a_step_back_lives_its_ttl(
    kind: str, tmp_path: Path
) -> None:
    """The server makes a session with the store's clock: made with its machine's,
    an hour behind the store's (which stands still after the step back), a session of
    a TTL shorter than the step was expired before its first attach (4404)."""
    storage = await open_storage(url_of(kind, tmp_path), default_ttl=60, cleanup_interval=None)
    try:
        await stamped_an_hour_ahead(storage, "before")
        config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
        async with (
            BambooServer(config, storage) as server,
            attach(server, "new", create=True, user_id="u") as (peer, welcome),
        ):
            assert welcome["session"]["ttl"] == 60
            await peer.send({"type": "event", "id": 1, "event": {"type": "token", "content": "x"}})
            assert await peer.recv() == {"type": "ack", "id": 1, "seq": 1}
        await assert_written_after(storage, "before", "new")
    finally:
        await storage.close()
