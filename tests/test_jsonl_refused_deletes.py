"""JSONL deletes whose later file jobs the store refuses (it takes no more work: its
threads shut down, or no thread could be started) once the checkpoints became
tombstones (persistence/jsonl/deletes.py): those deletes took effect, and are reported
so: a cleanup round counts them, with no "could not delete" in the log, and the next
open finishes them. Without the WAL, in ``fsync`` mode, a refused sync of the renames
is told as what it is: deleted, not durably until the next open (a round's log says so
once, and counts it). A round ends only once
every removal job it started has ended, one of them refused or not."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import (
    DeletedNotDurably,
    JsonlStorage,
    JsonlStorageConfig,
    StorageError,
)
from bamboo_session.persistence.listing import SessionFilter
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

GONE = 3
NOT_DURABLY = "is deleted, not durably until the next open: "


def refuse_jobs_of(storage: JsonlStorage, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's file threads refuse every job of the delete step ``step`` (a
    function of deletes.py), as they do once they take no more work."""
    real = storage._jobs.run

    async def run(function: Callable[..., Any], *args: Any) -> Any:
        if function.__name__ == step:
            raise StorageError("the store takes no more work: cannot schedule new futures")
        return await real(function, *args)

    monkeypatch.setattr(storage._jobs, "run", run)


async def expired_sessions(storage: JsonlStorage) -> None:
    for i in range(GONE):
        await storage.create_session(Session.new(f"gone-{i}", user_id="gone"))
        await storage.append_event(f"gone-{i}", AgentEvent.token("a"))
        await storage.update_session_state(f"gone-{i}", SessionState.EXPIRED)


async def assert_gone_after_open(config: JsonlStorageConfig) -> None:
    async with await JsonlStorage.open(config) as storage:
        assert (await storage.list_sessions(SessionFilter(user_id="gone"))).total == 0
        assert sorted(p.name for p in storage.layout.sessions.iterdir()) == []
        assert sorted(p.name for p in storage.layout.events.iterdir()) == []


@pytest.mark.parametrize(
    "step", ["settle_renames", "remove_files", "sync_events", "remove_tombstones"]
)
async def test_a_round_counts_the_deletes_done_before_a_job_was_refused(
    step: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync")
    async with await JsonlStorage.open(config) as storage:
        await expired_sessions(storage)
        refuse_jobs_of(storage, step, monkeypatch)
        assert await storage.cleanup_expired_sessions() == GONE
        assert "could not delete" not in caplog.text
        assert "is deleted" in caplog.text  # (and what stays for the next open)
        assert "not durably" not in caplog.text  # the WAL records each delete again
        assert (await storage.list_sessions(SessionFilter(user_id="gone"))).total == 0
        monkeypatch.undo()
    await assert_gone_after_open(config)


async def test_a_refused_sync_of_the_renames_without_the_wal_says_the_session_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        await expired_sessions(storage)
        refuse_jobs_of(storage, "settle_renames", monkeypatch)
        with pytest.raises(StorageError, match=NOT_DURABLY):
            await storage.delete_session("gone-0")
        assert await storage.get_metadata("gone-0") is None
        monkeypatch.undo()
        for i in range(1, GONE):
            await storage.delete_session(f"gone-{i}")
    await assert_gone_after_open(config)


async def test_a_delete_not_durable_without_the_wal_is_a_failed_sync_until_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As after a delete the store undid, or one not durable with the WAL: the gauge
    # bamboo_store_sync_failed (Storage.sync_failed) says so until a restart.
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        await expired_sessions(storage)
        assert not storage.sync_failed
        refuse_jobs_of(storage, "settle_renames", monkeypatch)
        with pytest.raises(DeletedNotDurably):
            await storage.delete_session("gone-0")
        assert storage.sync_failed
        monkeypatch.undo()
    async with await JsonlStorage.open(config) as storage:  # its open settled the delete
        assert not storage.sync_failed
        assert await storage.get_metadata("gone-0") is None


async def test_a_round_without_the_wal_tells_each_delete_of_an_unsynced_rename_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Each such delete took effect, not durably: one line says so, and none that it failed.
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync").with_wal(enabled=False)
    async with await JsonlStorage.open(config) as storage:
        await expired_sessions(storage)
        refuse_jobs_of(storage, "settle_renames", monkeypatch)
        assert await storage.cleanup_expired_sessions() == GONE
        for i in range(GONE):
            told = [r.getMessage() for r in caplog.records if f"'gone-{i}'" in r.getMessage()]
            assert len(told) == 1 and NOT_DURABLY in told[0], told
        monkeypatch.undo()
    await assert_gone_after_open(config)


async def test_a_refused_removal_waits_for_the_other_removals_before_the_round_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 40 sessions: their removals in two shares (deletes.py, at least 16 each).
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync")
    async with await JsonlStorage.open(config) as storage:
        for i in range(40):
            await storage.create_session(Session.new(f"many-{i:02d}", user_id="gone"))
            await storage.update_session_state(f"many-{i:02d}", SessionState.EXPIRED)
        real, started, release = storage._jobs.run, threading.Event(), threading.Event()

        def held(function: Callable[..., Any], *args: Any) -> Any:
            started.set()
            release.wait(30)
            return function(*args)

        async def run(function: Callable[..., Any], *args: Any) -> Any:
            if function.__name__ != "remove_files":
                return await real(function, *args)
            if "many-00" in args[1]:
                raise StorageError("the store takes no more work: cannot schedule new futures")
            return await real(held, function, *args)

        monkeypatch.setattr(storage._jobs, "run", run)
        cleanup = asyncio.create_task(storage.cleanup_expired_sessions())
        try:
            assert await asyncio.to_thread(started.wait, 30)
            done, _ = await asyncio.wait([cleanup], timeout=1)
            assert not done  # the other share still removes files: the round waits
        finally:
            release.set()
        assert await cleanup == 40
        monkeypatch.undo()
    await assert_gone_after_open(config)
