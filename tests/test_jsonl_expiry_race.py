"""JSONL: an append the store took before its session expired renews the session, even
when a cleanup round looks at the session while that append is still being written: the
round leaves it (an acknowledged event is never deleted with its session because its
write was under way at the expiry instant). Found by the r399 probe of publishes at the
instant of expiry (bench/RESULTS.md, "Cleanup, second pass"); the held log sync makes
the instant, on real files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import AgentEvent, Session
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
