"""A write-back error is reported to the files open on the log when it came (Linux's
errseq, since 4.13), once each, and not to one opened after it (nor at all once the
inode left the cache with no file open). So the JSONL store syncs a log's lines through
the descriptor they were written through, or a duplicate of it (the same open file),
never through one it opens later, which would sync clean over lost lines
(persistence/jsonl/logfiles.py, retirement.py). The error is injected as the kernel
reports it: the open files of the moment are marked (``O_NONBLOCK``, which their
duplicates share, a later open does not, and which does nothing to a regular file), and
the store's ``datasync`` fails once for each marked one."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import threading
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import files, logfiles, retirement, snapshot, wal
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.persistence.jsonl.snapshot import SnapshotEntry
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import segments

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


class WritebackError:
    """Write-back errors on chosen files, reported as Linux reports them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reported = 0
        real = files.datasync

        def datasync(fd: int) -> None:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            if flags & os.O_NONBLOCK:
                fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # reported once
                self.reported += 1
                raise OSError(errno.EIO, "injected write-back error")
            real(fd)

        for module in (logfiles, retirement, wal):  # every sync of a log, by any way
            monkeypatch.setattr(module, "datasync", datasync, raising=False)

    def strike(self, path: Path) -> int:
        """The error comes now: every file open on ``path`` will be told. Returns how
        many are open (a test that marks none proves nothing)."""
        marked = 0
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != str(path):
                    continue
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            except OSError:  # closed meanwhile (the listing's own descriptor)
                continue
            marked += 1
        return marked


async def tokens(storage: JsonlStorage, session_id: str) -> list[AgentEvent]:
    return [stored.event for stored in await storage.read_events(session_id)]


async def test_retiring_a_segment_syncs_through_the_descriptor_the_lines_went_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One byte per segment: each append starts a new one and retires the one before.
    config = JsonlStorageConfig(tmp_path).with_wal(segment_bytes=1)
    error = WritebackError(monkeypatch)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("one"))
        assert error.strike(config.layout.log("a").resolve()) == 1
        await storage.append_event("a", AgentEvent.token("two"))
        await storage._writer.retirement.settled()
        assert error.reported == 1
        assert storage.sync_failed
        assert len(segments(config)) == 2  # the retired one kept, and the current one
    assert len(segments(config)) == 2  # not even a clean close deletes them
    async with await JsonlStorage.open(config) as storage:
        assert not storage.sync_failed
        assert await tokens(storage, "a") == [AgentEvent.token("one"), AgentEvent.token("two")]
    assert segments(config) == []  # replayed, synced, then removed


async def a1_struck_beside_b(
    storage: JsonlStorage, config: JsonlStorageConfig, error: WritebackError
) -> None:
    """Sessions "a" and "b"; "a1" written to "a"'s log, whose write-back then fails."""
    for session_id in ("a", "b"):
        await storage.create_session(Session.new(session_id))
    await storage.append_event("a", AgentEvent.token("a1"))
    assert error.strike(config.layout.log("a").resolve()) == 1


async def test_a_log_let_go_with_unsynced_lines_is_synced_through_its_descriptor_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One log open at a time: an append to "b" closes "a"'s descriptor, which holds
    lines no sync has covered yet; closed unsynced, nothing would ever be told."""
    config = JsonlStorageConfig(tmp_path, max_open_logs=1)
    error = WritebackError(monkeypatch)
    async with await JsonlStorage.open(config) as storage:
        await a1_struck_beside_b(storage, config, error)
        await storage.append_event("b", AgentEvent.token("b1"))
        await storage._writer.flush()  # (the released descriptors are synced by now)
        assert error.reported == 1
        assert storage.sync_failed
    assert segments(config) != []  # kept for the next open
    async with await JsonlStorage.open(config) as storage:
        assert await tokens(storage, "a") == [AgentEvent.token("a1")]
        assert await tokens(storage, "b") == [AgentEvent.token("b1")]


async def test_a_segment_waiting_to_retire_is_kept_when_a_released_log_fails_its_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retirement of the segment that holds "a"'s first line waits for the files
    while the next batch lets go of "a"'s descriptor (one log open at a time), whose
    sync then fails. The segment is the lines' only durable copy: it must stay."""
    config = JsonlStorageConfig(tmp_path, max_open_logs=1).with_wal(segment_bytes=1)
    error = WritebackError(monkeypatch)
    async with await JsonlStorage.open(config) as storage:
        await a1_struck_beside_b(storage, config, error)
        # One tick: "a2" rotates the segment of "a1" out (its retirement starts), and
        # the batch of "b1" comes before that retirement gets the files.
        await asyncio.gather(
            storage.append_event("a", AgentEvent.token("a2")),
            storage.append_event("b", AgentEvent.token("b1")),
        )
        await storage._writer.flush()
        await storage._writer.retirement.settled()
        assert error.reported == 1
        assert storage.sync_failed
    # The power cut after the failed write-back: "a"'s lines never reached the disk.
    os.truncate(config.layout.log("a"), 0)
    async with await JsonlStorage.open(config) as storage:
        assert await tokens(storage, "a") == [AgentEvent.token("a1"), AgentEvent.token("a2")]
        assert await tokens(storage, "b") == [AgentEvent.token("b1")]


def logs_open(config: JsonlStorageConfig) -> int:
    """This process's descriptors of the store's session logs."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{name}").startswith(str(config.layout.events))
    return count


async def test_a_replay_that_fails_midway_leaves_no_log_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open's replay holds the logs it wrote, for their syncs; a log it cannot
    replay ("b", a directory now) fails the open, saying where and what to do (not an
    IsADirectoryError from its open of the log), and those it holds are closed."""
    config = JsonlStorageConfig(tmp_path)
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token(session_id))
        storage._writer.distrust_syncs()  # (a failed sync: the segments are kept)
    assert segments(config) != []
    config.layout.log("b").unlink()
    config.layout.log("b").mkdir()
    with pytest.raises(StorageError) as refused:
        await JsonlStorage.open(config)
    assert str(refused.value).startswith(f"{config.layout.log('b')} is a directory, where")
    assert "move it out of the store's directory" in str(refused.value)
    assert logs_open(config) == 0


class CloseOrder:
    """What happens to each log's descriptor while the store closes: its sync's end
    and its close, in order, per session; and whether two syncs were ever under way at
    once (the first two wait for each other, for a while)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, config: JsonlStorageConfig) -> None:
        self.events: list[tuple[str, str]] = []
        self.overlapped = False
        self._meeting = threading.Barrier(2, timeout=10)
        self._logs = str(config.layout.events)
        sync, close = logfiles.datasync, logfiles._close_quietly

        def datasync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if self._meeting.n_waiting < 2 and not self._meeting.broken:
                with contextlib.suppress(threading.BrokenBarrierError):
                    self._meeting.wait()
                    self.overlapped = True
            try:
                sync(fd)
            finally:
                if path.startswith(self._logs):
                    self.events.append(("synced", Path(path).stem))

        def close_quietly(session_id: str, fd: int) -> None:
            self.events.append(("closed", session_id))
            close(session_id, fd)

        monkeypatch.setattr(logfiles, "datasync", datasync)
        monkeypatch.setattr(logfiles, "_close_quietly", close_quietly)

    def of(self, session_id: str) -> list[str]:
        return [what for what, whose in self.events if whose == session_id]


async def test_the_close_syncs_the_logs_in_parallel_each_through_its_descriptor_then_closes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve logs open with unsynced lines, two of them struck: the close syncs them on
    several threads at once, each once and before its close; the two failures keep the
    WAL for the next open, which brings back what a power cut took from their logs."""
    config = JsonlStorageConfig(tmp_path)
    error = WritebackError(monkeypatch)
    sessions = [f"s{i:02d}" for i in range(12)]
    async with await JsonlStorage.open(config) as storage:
        for session_id in sessions:
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token(session_id))
        struck = [sessions[3], sessions[8]]
        for session_id in struck:
            assert error.strike(config.layout.log(session_id).resolve()) == 1
        order = CloseOrder(monkeypatch, config)
    assert order.overlapped, "the close synced the logs one after another"
    for session_id in sessions:
        assert order.of(session_id) == ["synced", "closed"], session_id
    assert error.reported == 2  # a failed sync did not stop the others of its thread
    assert storage.sync_failed
    assert segments(config) != []  # kept for the next open
    assert logs_open(config) == 0
    for session_id in struck:  # the power cut after the failed write-backs
        os.truncate(config.layout.log(session_id), 0)
    async with await JsonlStorage.open(config) as storage:
        for session_id in sessions:
            assert await tokens(storage, session_id) == [AgentEvent.token(session_id)]


def store_files_open(config: JsonlStorageConfig) -> int:
    """This process's descriptors of any file of the store (logs, WAL, lock)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(f"/proc/self/fd/{name}").startswith(str(config.base_path))
    return count


async def test_a_close_cancelled_while_it_syncs_the_logs_still_ends_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's close is cancelled while a log's sync is under way (held until the
    cancel came): the close still syncs every log, deletes the WAL it covered, closes
    every descriptor of the store, then raises the cancellation."""
    config = JsonlStorageConfig(tmp_path)
    storage = await JsonlStorage.open(config)
    sessions = ["a", "b", "c"]
    for session_id in sessions:
        await storage.create_session(Session.new(session_id))
        await storage.append_event(session_id, AgentEvent.token(session_id))
    syncing, cancelled = threading.Event(), threading.Event()
    sync = logfiles.datasync

    def held_datasync(fd: int) -> None:
        syncing.set()
        cancelled.wait(10)
        sync(fd)

    monkeypatch.setattr(logfiles, "datasync", held_datasync)
    closing = asyncio.create_task(storage.close())
    assert await asyncio.to_thread(syncing.wait, 10)
    closing.cancel()
    cancelled.set()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert store_files_open(config) == 0
    assert segments(config) == []  # every log synced: the WAL was deleted
    async with await JsonlStorage.open(config) as storage:
        for session_id in sessions:
            assert await tokens(storage, session_id) == [AgentEvent.token(session_id)]


async def test_a_close_cancelled_while_it_writes_the_snapshot_keeps_the_lock_until_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the index snapshot is written (held until the cancel came), the
    close releases the directory's lock only once the snapshot is in place: a process
    that took the lock meanwhile would consume the snapshot, then find this one's
    rename bring back a stale one."""
    config = JsonlStorageConfig(tmp_path)
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("a"))
    writing, cancelled, written = threading.Event(), threading.Event(), threading.Event()
    lock_held_when_written: list[bool] = []
    write = snapshot.write

    def held_write(layout: Layout, entries: list[SnapshotEntry]) -> None:
        writing.set()
        cancelled.wait(10)
        write(layout, entries)
        lock_held_when_written.append(store_files_open(config) > 0)
        written.set()

    monkeypatch.setattr(snapshot, "write", held_write)
    closing = asyncio.create_task(storage.close())
    assert await asyncio.to_thread(writing.wait, 10)
    closing.cancel()
    await asyncio.sleep(0)  # the close's turn to take the cancellation
    cancelled.set()
    assert await asyncio.to_thread(written.wait, 10)
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert lock_held_when_written == [True]
    assert store_files_open(config) == 0
