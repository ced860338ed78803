"""Folding the WAL back into the database file, beside the writer rather than in its way.

SQLite checkpoints on its own inside a COMMIT once the WAL passes ``wal_autocheckpoint``
pages: with ``synchronous=FULL`` that is a sync of the WAL, a copy of every page it
holds, and a sync of the database file, on the writer's thread, while every append of
the next batch waits. Instead a connection of its own, on a thread of its own, runs
``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds: a passive checkpoint
never blocks the writer or the readers, and the writer restarts the WAL from its start
once a checkpoint has caught up. The writer keeps ``wal_autocheckpoint`` at the WAL's
bound in bytes (``WAL_MAX_BYTES``) as a safety net, should this one fall behind.

On a full disk a passive checkpoint cannot fold the WAL in (the database file has no
room to grow), and a WAL that is never restarted only grows: once space is freed, the
next writes would take it before any checkpoint could, and the store would stay full
for good. So after a write fails for want of space or with an I/O error, the writer's
next step is :class:`WalFold`: a ``TRUNCATE`` checkpoint, which folds the whole WAL in
and empties its file; while it fails for want of space or with an I/O error, writes are
refused without touching the disk, and freed space goes to the fold first. The open
folds a WAL a crash left (perhaps on a full disk) the same way, before any reader of
ours exists. A fold never waits for readers: one that they are in the way of leaves the
WAL folded up to them and the writes flowing, and is tried again later (a healthy store
never refuses writes because of readers).

A checkpoint moves nothing that was not already durable: acknowledged means in the
synced WAL, checkpointed or not. Its failures are logged once per outage
(:class:`~..failure_log.FailureLog`), not once a second.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from bamboo_session.tasks import cancel_and_wait, detached

from ..failure_log import FailureLog
from .lock_wait import CLOSE_WAIT
from .schema import connect_checkpointer

log = logging.getLogger(__name__)

INTERVAL: Final = 1.0  # seconds between passive checkpoints
# Seconds between two folds tried while writes wait for one: each reads the WAL and
# writes the database file until the disk refuses, so not at every batch of a storm.
FOLD_RETRY: Final = 0.25
# Primary SQLite result codes of a failed write after which the WAL is folded first.
FOLD_AFTER: Final = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR})


class Checkpointer:
    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self._path = path
        self._interval = interval
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bamboo-sqlite-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.checkpoints = 0  # for tests: passive checkpoints run
        self._failures = FailureLog(log, f"checkpoints of {path}")  # once per outage

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._thread, connect_checkpointer, self._path)
        self._task = detached(self._run(), name="bamboo-sqlite-checkpoint")

    async def close(self) -> None:
        """Ends the rounds and closes the connection, on its thread once a checkpoint
        under way has ended; waited for ``CLOSE_WAIT`` seconds at most: a checkpoint
        whose read lock another process holds waits in SQLite for some 10 s
        (lock_wait.py), and the close is then left to the thread."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._db is not None:
            db, self._db = self._db, None
            closing = asyncio.get_running_loop().run_in_executor(self._thread, db.close)
            await asyncio.wait([closing], timeout=CLOSE_WAIT)
        self._thread.shutdown(wait=False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            try:
                await loop.run_in_executor(self._thread, self._checkpoint)
            except sqlite3.Error as exc:
                # The writer's own checkpoints take over; the next round tries again.
                self._failures.failed(
                    str(self._path),
                    f"checkpoint of {self._path} failed: {exc}",
                    exc.sqlite_errorcode,
                )
            else:
                self._failures.succeeded(str(self._path))

    def _checkpoint(self) -> None:
        assert self._db is not None
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1


class FoldPending(Exception):
    """Writes are refused until the WAL is folded in; ``kind``: the SQLite error code
    of the failure that says why (for the failure log)."""

    def __init__(self, message: str, kind: int | None) -> None:
        super().__init__(message)
        self.kind = kind


class WalFold:
    """Whether the writer must fold the whole WAL into the database file, and that fold
    (on the writer's thread and connection only): tried at open, then before a write
    for as long as it has not succeeded, at most every ``FOLD_RETRY`` seconds. Writes
    are refused only while the fold is owed after a failed write or itself fails, for
    want of space or with an I/O error; not while readers are in its way."""

    def __init__(self) -> None:
        self._why: str | None = "the store was opened"
        self._kind: int | None = None
        self._refusing = False  # the writes wait for the fold
        self._state = "not tried yet"
        self._next_try = 0.0  # monotonic clock

    @property
    def pending(self) -> bool:
        return self._why is not None

    def at_open(self, db: sqlite3.Connection) -> None:
        """The fold of a WAL a crash left, before any reader of ours exists; what it
        could not do is left pending, as after a failed write."""
        self._next_try = time.monotonic() + FOLD_RETRY
        self._try(db)

    def failed(self, exc: sqlite3.Error) -> None:
        """A write failed with ``exc``: if for want of space or with an I/O error, the
        next write folds the WAL first."""
        if exc.sqlite_errorcode & 0xFF in FOLD_AFTER:
            self._why = f"a write failed ({exc})"
            self._kind = exc.sqlite_errorcode
            self._refusing = True
            self._state = "not tried yet"
            self._next_try = 0.0

    def before_write(self, db: sqlite3.Connection) -> None:
        """Folds the WAL in if it must be and it is time to try; raises FoldPending,
        having written nothing else, while the writes must wait for the fold."""
        if self._why is None:
            return
        now = time.monotonic()
        if now >= self._next_try:
            self._next_try = now + FOLD_RETRY
            self._try(db)
        if self._refusing:
            raise FoldPending(
                f"its WAL must be folded into the database file before it takes writes, "
                f"since {self._why}; {self._state}",
                self._kind,
            )

    def _try(self, db: sqlite3.Connection) -> None:
        try:
            busy, wal_frames, _ = _checkpoint_without_waiting(db)
        except sqlite3.Error as exc:
            self._kind = exc.sqlite_errorcode
            self._refusing = exc.sqlite_errorcode & 0xFF in FOLD_AFTER
            self._state = f"the fold failed: {exc}; tried again shortly"
            return
        if not busy:
            self._why = None
            self._refusing = False
        elif wal_frames >= 0:
            # Readers were in its way: what it could fold is folded, and the disk had
            # room for it. Writes go on; the fold waits for a moment without readers.
            self._refusing = False
            self._state = "readers were in its way"
        else:
            # The checkpointer held the checkpoint lock: a passive checkpoint, over
            # soon. Nothing was learnt about the disk; tried again shortly.
            self._state = "the checkpointer was folding it; tried again shortly"


def _checkpoint_without_waiting(db: sqlite3.Connection) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` on the writer's connection, which has no busy
    timeout (schema.connect_writer): a reader in its way never holds the writer's
    thread, and every write, for a busy wait. Returns (busy, frames in the WAL or -1,
    frames folded or -1)."""
    busy, wal_frames, folded = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy, wal_frames, folded
