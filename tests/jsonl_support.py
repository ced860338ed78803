"""Helpers for the JSONL backend's tests: its files, read the way the backend reads them,
sessions made in a storage (``make``, ``populate``), the WAL's segments (and crash
states made of them by hand), and an OS call made to fail once (``failing_once``)."""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage
from bamboo_session.persistence.jsonl import JsonlStorageConfig, checkpoint
from bamboo_session.persistence.jsonl.checkpoint import Checkpoint
from bamboo_session.protocol.models import Message, Session, SessionState, utcnow
from tests.forks import ForkedChild

JSONL_CHILD = Path(__file__).with_name("jsonl_child.py")


def killed_child(mode: str, base: Path, count: int = 5) -> subprocess.CompletedProcess[str]:
    """tests/jsonl_child.py run in ``mode`` over ``base``, checked to have ended by its
    own kill -9 (each mode kills itself at the instant it is about); forked once its
    imports are done (tests/forks.py)."""
    argv = [str(JSONL_CHILD), mode, str(base), str(count)]
    child = ForkedChild(argv)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err.decode()
    return subprocess.CompletedProcess(argv, child.returncode, out.decode(), err.decode())


def saved(config: JsonlStorageConfig, session_id: str) -> Checkpoint:
    """The session's checkpoint as it is on disk now."""
    found = checkpoint.read(config.layout.checkpoint(session_id))
    assert isinstance(found, checkpoint.Found), f"no checkpoint of the new format: {found!r}"
    return found.checkpoint


def log_path(config: JsonlStorageConfig, session_id: str = "s") -> Path:
    return config.layout.log(session_id)


def crash_state(config: JsonlStorageConfig) -> None:
    """Forget the snapshot, as after a crash (a clean close is the only writer of one)."""
    config.layout.snapshot.unlink(missing_ok=True)


async def make(storage: JsonlStorage, session_id: str, **kwargs: object) -> Session:
    session = Session.new(session_id, **kwargs)  # type: ignore[arg-type]
    await storage.create_session(session)
    return session


async def populate(storage: JsonlStorage) -> list[str]:
    now = utcnow()
    ids = []
    for i in range(12):
        session = Session.new(
            f"s{i:02d}", user_id=f"u{i % 3}", title=f"Chat {i} about cats" if i % 2 else f"Chat {i}"
        )
        session.metadata.created_at = now - timedelta(minutes=100 - i)
        session.metadata.touch(now - timedelta(minutes=50 - i))
        await storage.create_session(session)
        for _ in range(i % 4):
            await storage.append_message(session.id, Message.user("m"))
        ids.append(session.id)
    await storage.update_session_state("s03", SessionState.IDLE)
    await storage.update_session_state("s06", SessionState.IDLE)
    return ids


def break_log(base: Path, session_id: str) -> Path:
    """Breaks the session's log, in the store at ``base``, for good until it is mended
    (``mend_log``): a directory takes its place, so the writer's next open of it fails
    (EISDIR), whatever is appended. The writer must not hold it open: a session
    created and not yet appended to, or whose descriptor was closed."""
    log = JsonlStorageConfig(base).layout.log(session_id)
    log.rename(log.with_suffix(".saved"))
    log.mkdir()
    return log


def mend_log(log: Path) -> None:
    log.rmdir()
    log.with_suffix(".saved").rename(log)


def segments(config: JsonlStorageConfig) -> list[Path]:
    return [path for _number, path in config.layout.segments()]


def save_segments(config: JsonlStorageConfig, aside: Path) -> None:
    aside.mkdir(exist_ok=True)
    for path in segments(config):
        shutil.copy(path, aside / path.name)


def crash_with_segments(config: JsonlStorageConfig, aside: Path) -> None:
    """After a clean close: the segments copied aside are back, the snapshot gone."""
    for path in aside.iterdir():
        shutil.copy(path, config.layout.wal / path.name)
    config.layout.snapshot.unlink(missing_ok=True)


def wal_records(segment: Path) -> bytes:
    """A segment's records: what comes before the room allocated ahead of them."""
    return segment.read_bytes().rstrip(b"\0")


def failing_once(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> dict[str, bool]:
    """Makes ``module.name`` raise EIO on its next call while ``switch["on"]``."""
    real = getattr(module, name)
    switch = {"on": False}

    def wrapper(*args: Any) -> Any:
        if switch["on"]:
            switch["on"] = False
            raise OSError(errno.EIO, "injected")
        return real(*args)

    monkeypatch.setattr(module, name, wrapper)
    return switch
