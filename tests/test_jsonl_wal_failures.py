"""The shared WAL of ``fsync`` mode (persistence/wal.py) when its writes or syncs fail
(EIO, injected): a failed WAL sync acknowledges nothing and leaves no record behind, a
delete the WAL cannot record fails and keeps the session, no segment is deleted after a
failed log sync, and none is left behind with a failed record."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import retirement, wal
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import (
    crash_with_segments,
    failing_once,
    save_segments,
    segments,
    wal_records,
)


async def test_a_failed_wal_sync_acknowledges_nothing_and_leaves_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "data", sync_helper=False)
    aside = tmp_path / "aside"
    real = wal.datasync
    failing = {"on": False}

    def datasync(fd: int) -> None:
        if failing["on"]:
            failing["on"] = False
            raise OSError(errno.EIO, "injected")
        real(fd)

    monkeypatch.setattr(wal, "datasync", datasync)
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("ok1"))
        segment = segments(config)[0]
        records = wal_records(segment)
        log_size = (config.layout.events / "a.jsonl").stat().st_size
        failing["on"] = True
        results = await asyncio.gather(
            storage.append_event("a", AgentEvent.token("lost-a")),
            storage.append_event("b", AgentEvent.token("lost-b")),
            return_exceptions=True,
        )
        assert all(isinstance(r, StorageError) for r in results), results
        # Cut back to the records' end (the room ahead goes too): nothing to replay.
        assert segment.stat().st_size == len(records) and wal_records(segment) == records
        assert (config.layout.events / "a.jsonl").stat().st_size == log_size
        assert await storage.last_seq("a") == 1
        # Works again, with the seq the failed append had.
        assert (await storage.append_event("a", AgentEvent.token("ok2"))).seq == 2
        save_segments(config, aside)
    crash_with_segments(config, aside)
    for session_id in ("a", "b"):
        (config.layout.events / f"{session_id}.jsonl").write_bytes(b"")
    async with await JsonlStorage.open(config) as storage:
        assert [e.event for e in await storage.read_events("a")] == [
            AgentEvent.token("ok1"),
            AgentEvent.token("ok2"),
        ]
        assert [e.event for e in await storage.read_events("b")] == [AgentEvent.token("ok1")]


async def test_a_delete_that_the_wal_cannot_record_fails_and_keeps_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path, sync_helper=False)
    failing = failing_once(monkeypatch, wal, "datasync")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("old"))
        await storage.append_event("old", AgentEvent.token("secret"))
        failing["on"] = True
        with pytest.raises(StorageError, match="deletion"):
            await storage.delete_session("old")
        # Still there, whole: a crash now cannot feed its events into a new "old".
        assert [e.event for e in await storage.read_events("old")] == [AgentEvent.token("secret")]
        await storage.delete_session("old")  # works once the WAL does
        await storage.create_session(Session.new("old"))
        assert await storage.read_events("old") == []


async def test_no_segment_is_deleted_after_a_failed_log_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_age=0.05)
    failing = failing_once(monkeypatch, retirement, "datasync")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        failing["on"] = True
        for i in range(4):  # each append after 0.06 s rotates; retirement syncs "a"
            await storage.append_event("a", AgentEvent.token(str(i)))
            await asyncio.sleep(0.06)
        await storage._writer.retirement.settled()
        # After a failed sync the kernel may report later ones clean: keep everything.
        assert len(segments(config)) >= 3
    assert len(segments(config)) >= 3  # not even a clean close deletes them
    async with await JsonlStorage.open(config) as storage:
        assert await storage.last_seq("a") == 4
    assert segments(config) == []  # replayed at open, then removed


async def test_a_segment_is_not_left_behind_with_a_failed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rotation by age only once the failure is in: a short age from the start was
    # sometimes over by the failing append on a loaded machine, whose rotation then took
    # the failing sync (allocating the new segment's room), and nothing failed.
    config = JsonlStorageConfig(tmp_path, sync_helper=False).with_wal(segment_age=3600.0)
    sync_fails = failing_once(monkeypatch, wal, "datasync")
    truncate_fails = failing_once(monkeypatch, wal.os, "ftruncate")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("ok1"))
        segment = segments(config)[0]
        records = wal_records(segment)
        sync_fails["on"] = truncate_fails["on"] = True
        with pytest.raises(StorageError):
            await storage.append_event("a", AgentEvent.token("FAILED"))
        assert len(wal_records(segment)) > len(records)  # the cut failed: the record is still there
        segment_file = storage._writer._wal
        assert segment_file is not None
        segment_file.segment_age = 0.0  # the next append rotates by age
        await storage.append_event("a", AgentEvent.token("ok2"))
        # The old segment was cut before being left behind (it may be retired already).
        assert not segment.exists() or segment.stat().st_size == len(records)
        assert [e.event for e in await storage.read_events("a")] == [
            AgentEvent.token("ok1"),
            AgentEvent.token("ok2"),
        ]
