"""A JSONL append that fails, and whose lines cannot be cut back out of the log: the WAL's
sync fails (the sync helper's ``fdatasync`` fails with EIO, tests/failing_sync_helper.py),
then the log's ``ftruncate`` fails too (injected: EIO for that log's descriptors only).

The failed lines stay in the file until the writer cuts them before the log's next
write, so until then they count in the session's room and in its user's sum
(``max_user_bytes``): the sums follow what the files hold. Once the cut is done, they
count no more, and nothing drifts."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError, UserFull
from bamboo_session.protocol.models import AgentEvent, Session
from tests.test_jsonl_replace_failures import (  # noqa: F401 (the fixture)
    FailingSync,
    fail_sync_fixture,
)

USER_CAP = 5000  # a: 1 KB, then 2 KB of failed lines; b: 2 KB fits only without them


class FailingTruncate:
    """``os.ftruncate`` that fails with EIO on the log of one session while armed."""

    def __init__(self, log_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.log_path = log_path
        self.armed = False
        self.failures = 0
        real: Callable[[int, int], None] = os.ftruncate

        def ftruncate(fd: int, length: int) -> None:
            if self.armed and os.fstat(fd).st_ino == os.stat(self.log_path).st_ino:
                self.failures += 1
                raise OSError(errno.EIO, "injected EIO in ftruncate")
            real(fd, length)

        monkeypatch.setattr(os, "ftruncate", ftruncate)


def token(size: int) -> list[tuple[AgentEvent, None]]:
    return [(AgentEvent.token("x" * size), None)]


def user_bytes(storage: JsonlStorage) -> int:
    return storage._appends.users.of("u")  # the sum max_user_bytes is checked against


def files_hold(config: JsonlStorageConfig) -> int:
    return sum(os.path.getsize(config.layout.log(sid)) for sid in ("a", "b"))


async def fail_a_cut(
    storage: JsonlStorage,
    config: JsonlStorageConfig,
    fail_sync: FailingSync,
    monkeypatch: pytest.MonkeyPatch,
) -> FailingTruncate:
    """Sessions a and b of user u; a's second append fails, and so does the cut of its
    lines: 2 KB of failed lines stay in a's log after 1 KB of good ones. The injected
    ftruncate failure is left armed."""
    for session_id in ("a", "b"):
        await storage.create_session(Session.new(session_id, user_id="u"))
    await storage.append_events("a", token(1000))
    truncate = FailingTruncate(config.layout.log("a"), monkeypatch)
    truncate.armed = True
    fail_sync.arm()
    with pytest.raises(StorageError):
        await storage.append_events("a", token(2000))
    assert fail_sync.fired() and truncate.failures == 1
    return truncate


async def test_lines_a_failed_cut_leaves_count_until_they_are_cut(
    tmp_path: Path, fail_sync: FailingSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "data", max_user_bytes=USER_CAP)
    async with await JsonlStorage.open(config) as storage:
        truncate = await fail_a_cut(storage, config, fail_sync, monkeypatch)
        # The failed lines are still in a's log: they count, as the file holds them.
        assert files_hold(config) > 3000
        assert user_bytes(storage) == files_hold(config)
        with pytest.raises(UserFull):
            await storage.append_events("b", token(2000))  # would fit without them
        # The cut is retried before a's next write; once done, the lines count no more.
        truncate.armed = False
        await storage.append_events("a", token(10))
        assert [e.seq for e in await storage.read_events("a")] == [1, 2]
        assert user_bytes(storage) == files_hold(config) < 1500
        await storage.append_events("b", token(2000))
        assert user_bytes(storage) == files_hold(config)
    async with await JsonlStorage.open(config) as storage:
        assert user_bytes(storage) == files_hold(config)


async def test_lines_a_failed_cut_leaves_stay_failed_after_a_close(
    tmp_path: Path, fail_sync: FailingSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store closes before a's next write, so the cut was never retried: the failed
    lines must not come back as stored events at the next open."""
    config = JsonlStorageConfig(tmp_path / "data", max_user_bytes=USER_CAP)
    async with await JsonlStorage.open(config) as storage:
        truncate = await fail_a_cut(storage, config, fail_sync, monkeypatch)
    truncate.armed = False
    async with await JsonlStorage.open(config) as storage:
        assert [e.seq for e in await storage.read_events("a")] == [1]
        assert user_bytes(storage) == files_hold(config) < 1500


async def test_lines_a_failed_cut_leaves_are_cut_after_a_failed_delete(
    tmp_path: Path, fail_sync: FailingSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete of a, which fails (its checkpoint cannot become a tombstone), before a's
    next write: a is back, and its failed lines are still cut before that write."""
    config = JsonlStorageConfig(tmp_path / "data", max_user_bytes=USER_CAP)
    async with await JsonlStorage.open(config) as storage:
        truncate = await fail_a_cut(storage, config, fail_sync, monkeypatch)
        truncate.armed = False
        blocker = config.layout.tombstone("a")
        blocker.mkdir()
        (blocker / "x").touch()  # renaming the checkpoint over it fails
        with pytest.raises(StorageError):
            await storage.delete_session("a")
        (blocker / "x").unlink()
        blocker.rmdir()
        assert user_bytes(storage) == files_hold(config)
        await storage.append_events("a", token(10))
        events = await storage.read_events("a")
        assert [e.seq for e in events] == [1, 2]
        assert events[1].event == AgentEvent.token("x" * 10)
        assert user_bytes(storage) == files_hold(config) < 1500
    async with await JsonlStorage.open(config) as storage:
        events = await storage.read_events("a")
        assert [e.seq for e in events] == [1, 2]
        assert user_bytes(storage) == files_hold(config)
