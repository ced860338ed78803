"""Failed writes: nothing of a failed append is acknowledged or left in the log, seqs stay
gap-free, and appends work again once the cause is gone.

The disk-full case runs in a child process with RLIMIT_FSIZE (a limit on the whole
process would break pytest itself)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionLogFailed,
    StorageError,
)
from bamboo_session.persistence.jsonl import wal
from bamboo_session.protocol.log_lines import decode_stored_event
from bamboo_session.protocol.models import AgentEvent, Session, utcnow
from tests.support import NOBODY, unprivileged
from tests.write_failures import assert_told_once, check_report

CHILD = Path(__file__).with_name("jsonl_child.py")  # its diskfull: tests/write_failures.py


def test_a_log_refused_is_its_own_and_the_directory_of_every_log_refused_is_the_stores() -> None:
    """As a user file modes bind (tests/jsonl_child.py permissions): an append whose log
    may not be written is ``SessionLogFailed``, the session's alone; one whose log's
    directory may not be searched (EACCES too, at the open) is the store's, a plain
    StorageError, though a session whose log is open still appends. Both mended, the
    session appends again."""
    drop = unprivileged()
    base = Path(tempfile.mkdtemp(prefix="bamboo-modes-"))  # /tmp: reachable by nobody
    try:
        if drop:
            os.chown(base, NOBODY, NOBODY)
        result = subprocess.run(
            [*drop, sys.executable, str(CHILD), "permissions", str(base / "data"), "0"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        own, b_stored, directory, b_again, a_back = result.stdout.splitlines()
        assert own.startswith("SessionLogFailed: ") and "Permission denied" in own, own
        assert directory.startswith("StorageError: ") and "Permission denied" in directory
        assert [b_stored, b_again, a_back] == ["b stored", "b stored", "a stored"]
    finally:
        shutil.rmtree(base)


def test_disk_full_fails_cleanly_and_recovers(tmp_path: Path) -> None:
    base = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, str(CHILD), "diskfull", str(base), "20000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    seqs = check_report(report)
    # The log past the file size limit (EFBIG): the session's alone, not the store's.
    assert "its own log's write" in report["reasons"]
    # The store's log tells the outage once, with the OS error, then its end in counts.
    assert_told_once(result.stderr, "appending to the log of session 'full' failed")

    raw = (base / "events" / "full.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    lines = [decode_stored_event(line) for line in raw.splitlines()]
    assert [event.seq for event in lines] == seqs

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert storage.recovery is not None and storage.recovery.torn_lines_cut == 0
            events = await storage.read_events("full")
            assert [event.seq for event in events] == seqs
            history = await storage.get_session_history("full")
            assert [m.content.split("|")[0] + "|" for m in history] == report["history"]

    asyncio.run(reopen())


async def test_appends_queued_behind_a_failed_one_fail_too(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path, max_open_logs=2)
    async with await JsonlStorage.open(config) as storage:
        for session_id in "abc":
            await storage.create_session(Session.new(session_id))
        assert (await storage.append_event("a", AgentEvent.token("a1"))).seq == 1
        await storage.append_event("b", AgentEvent.token("b1"))
        await storage.append_event("c", AgentEvent.token("c1"))  # a's descriptor is closed
        await storage._writer.flush()  # (synced first, after c1's acknowledgement)
        log = config.layout.events / "a.jsonl"
        log.rename(log.with_suffix(".saved"))
        log.mkdir()  # opening a's log now fails (EISDIR)

        # One batch: a slow write to b, then a's append that fails. While the writer is
        # busy with it, two more appends to a queue up behind with seqs 3 and 4.
        slow = asyncio.create_task(storage.append_event("b", AgentEvent.token("x" * 30_000_000)))
        failing = asyncio.create_task(storage.append_event("a", AgentEvent.token("a2")))
        await asyncio.sleep(0.01)
        behind = [
            asyncio.create_task(storage.append_event("a", AgentEvent.token(f"a{i}")))
            for i in (3, 4)
        ]
        await slow
        # Its own log's failure, and those behind it: the session's alone, not the store's.
        with pytest.raises(SessionLogFailed, match=r"Is a directory.*nothing of this append"):
            await failing
        for task in behind:
            with pytest.raises(SessionLogFailed, match="earlier append"):
                await task
        assert await storage.last_seq("a") == 1

        log.rmdir()
        log.with_suffix(".saved").rename(log)
        assert (await storage.append_event("a", AgentEvent.token("a5"))).seq == 2
        events = await storage.read_events("a")
        assert [(e.seq, e.event) for e in events] == [
            (1, AgentEvent.token("a1")),
            (2, AgentEvent.token("a5")),
        ]


async def test_an_append_whose_wal_sync_fails_fails_for_the_store_not_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure of the one file every session's appends share (its sync fails: EIO,
    injected once; in this process, not the sync helper's) is the store's: a plain
    StorageError, not ``SessionLogFailed``."""
    config = JsonlStorageConfig(tmp_path, sync_helper=False)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("a1"))
        real, failures = wal.datasync, [OSError(errno.EIO, "injected EIO")]

        def datasync(fd: int) -> None:
            if failures:
                raise failures.pop()
            real(fd)

        monkeypatch.setattr(wal, "datasync", datasync)
        with pytest.raises(StorageError, match="injected EIO") as failed:
            await storage.append_event("a", AgentEvent.token("a2"))
        assert not isinstance(failed.value, SessionLogFailed)
        assert (await storage.append_event("a", AgentEvent.token("a3"))).seq == 2


async def test_a_session_whose_delete_fails_does_not_hold_up_the_cleanup_of_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint of "a" cannot become its tombstone (a directory holds the name): its
    delete fails, every time. The cleanup removes the other expired sessions all the
    same, says why "a" stays, and tries it again at its next round."""
    config = JsonlStorageConfig(tmp_path)
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("a", "b", "c"):
            session = Session.new(session_id, ttl=60)
            session.metadata.touch(utcnow() - timedelta(minutes=5))
            await storage.create_session(session)
        blocker = config.layout.tombstone("a")
        blocker.mkdir()
        (blocker / "in-the-way").write_bytes(b"")
        assert await storage.cleanup_expired_sessions() == 2
        assert await storage.get_metadata("a") is not None
        assert await storage.get_metadata("b") is None
        assert await storage.get_metadata("c") is None
        assert "'a'" in caplog.text and "in-the-way" not in caplog.text
        (blocker / "in-the-way").unlink()
        blocker.rmdir()
        assert await storage.cleanup_expired_sessions() == 1
        assert await storage.get_metadata("a") is None
