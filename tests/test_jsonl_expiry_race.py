"""JSONL: an append the store took before its session expired renews the session, even
when a cleanup round looks at the session while that append is still being written: the
round leaves it (an acknowledged event is never deleted with its session because its
write was under way at the expiry instant). Found by the r399 probe of publishes at the
instant of expiry (bench/RESULTS.md, "Cleanup, second pass"); the held log sync makes
the instant, on real files. A ``hello`` with ``create`` (``create_session`` with
``replace_expired``) that comes meanwhile waits for that append: stored, it renewed the
session, which stays (SessionExists); refused, the session is still expired, and a new
one replaces it."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.base import SessionExists
from bamboo_session.protocol.models import AgentEvent, Session, SessionMetadata
from tests.held_delete_support import held_log_sync
from tests.instances import eventually


async def test_a_round_leaves_a_session_whose_append_taken_before_its_expiry_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the WAL an append's commit syncs the session's log: held there, the
    # append is taken (before the expiry) and not yet written when the round looks.
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s", user_id="u", ttl=2))
        before = await storage.get_metadata("s")
        assert before is not None and before.expires_at is not None
        started, release = held_log_sync(monkeypatch)
        append = asyncio.create_task(storage.append_event("s", AgentEvent.token("late")))
        await asyncio.to_thread(started.wait, 30)
        expiry = before.expires_at
        await eventually(lambda: storage.now() > expiry, timeout=60)  # the write held
        cleanup = asyncio.create_task(storage.cleanup_expired_sessions())

        # The round has decided: it is over, or it took the session out of the store.
        async def decided() -> bool:
            return cleanup.done() or await storage.get_metadata("s") is None

        await eventually(decided, timeout=60)
        release.set()
        acked = await append
        assert await cleanup == 0
        after = await storage.get_metadata("s")
        assert after is not None and after.expires_at is not None
        assert after.expires_at > before.expires_at  # the append renewed it
        assert [(e.seq, e.event) for e in await storage.read_events("s")] == [
            (acked.seq, AgentEvent.token("late"))
        ]
    async with await JsonlStorage.open(config) as storage:  # and so it stays
        assert [e.event for e in await storage.read_events("s")] == [AgentEvent.token("late")]


# A TTL long enough for an append taken a second before the expiry to renew the session
# well past the moment its held write is let go (the create looks at it then).
TTL = 4


async def append_held_past_expiry(
    storage: JsonlStorage, monkeypatch: pytest.MonkeyPatch, fails: bool = False
) -> tuple[SessionMetadata, asyncio.Task[object], threading.Event]:
    """Session ``s`` with an append taken a second before its expiry, its write held
    until the expiry has passed (then let go by the event returned: to fail, if
    ``fails``); the session's metadata before it."""
    await storage.create_session(Session.new("s", user_id="u", ttl=TTL))
    before = await storage.get_metadata("s")
    assert before is not None and before.expires_at is not None
    expiry = before.expires_at
    await eventually(lambda: storage.now() > expiry - timedelta(seconds=1), timeout=60)
    started, release = held_log_sync(monkeypatch, fails)
    append = asyncio.create_task(storage.append_event("s", AgentEvent.token("late")))
    await asyncio.to_thread(started.wait, 30)  # taken, before the expiry, and held
    await eventually(lambda: storage.now() > expiry, timeout=60)
    return before, append, release


async def test_a_create_over_a_session_whose_append_taken_before_its_expiry_is_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        before, append, release = await append_held_past_expiry(storage, monkeypatch)
        new = Session.new("s", user_id="v", ttl=TTL)
        create = asyncio.create_task(storage.create_session(new, replace_expired=True))
        await asyncio.sleep(0)  # the create has looked at the session: expired
        release.set()
        acked = await append
        with pytest.raises(SessionExists):  # the append renewed it
            await create
        after = await storage.get_metadata("s")
        assert after is not None and after.expires_at is not None
        assert (after.epoch, after.user_id) == (before.epoch, "u")
        assert after.expires_at > storage.now()
        assert [(e.seq, e.event) for e in await storage.read_events("s")] == [
            (acked.seq, AgentEvent.token("late"))
        ]
    async with await JsonlStorage.open(config) as storage:  # and so it stays
        stored = await storage.get_metadata("s")
        assert stored is not None and stored.epoch == before.epoch
        assert [e.event for e in await storage.read_events("s")] == [AgentEvent.token("late")]


async def test_a_create_replaces_a_session_whose_append_taken_before_its_expiry_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        before, append, release = await append_held_past_expiry(storage, monkeypatch, fails=True)
        new = Session.new("s", user_id="v", ttl=TTL)
        create = asyncio.create_task(storage.create_session(new, replace_expired=True))
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(StorageError):  # refused, and said so
            await append
        await create  # the session stayed expired: replaced
        after = await storage.get_metadata("s")
        assert after is not None
        assert (after.epoch, after.user_id) == (new.metadata.epoch, "v")
        assert after.epoch != before.epoch
        assert await storage.read_events("s") == []
    async with await JsonlStorage.open(config) as storage:
        stored = await storage.get_metadata("s")
        assert stored is not None and stored.epoch == new.metadata.epoch
        assert await storage.read_events("s") == []
