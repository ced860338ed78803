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
for good. So after a write fails for want of space or with an I/O error, and at open
(a WAL a crash left), the writer's next step is :class:`WalFold`: a ``TRUNCATE``
checkpoint, which folds the whole WAL in and empties its file; until one succeeds,
writes are refused without touching the disk, and freed space goes to the fold first.

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

from bamboo_session.tasks import cancel_and_wait

from ..failure_log import FailureLog
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
        self._task = asyncio.create_task(self._run(), name="bamboo-sqlite-checkpoint")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown()

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
    """Whether the writer must fold the whole WAL into the database file before its next
    write, and that fold (on the writer's thread and connection only)."""

    def __init__(self) -> None:
        # At open: a WAL left by a crash, perhaps on a full disk, is folded in first.
        self._why: str | None = "the store was opened"
        self._kind: int | None = None
        self._next_try = 0.0  # monotonic clock

    @property
    def pending(self) -> bool:
        return self._why is not None

    def failed(self, exc: sqlite3.Error) -> None:
        """A write failed with ``exc``: if for want of space or with an I/O error, the
        next write folds the WAL first."""
        if exc.sqlite_errorcode & 0xFF in FOLD_AFTER:
            self._why = f"a write failed ({exc})"
            self._kind = exc.sqlite_errorcode
            self._next_try = 0.0

    def before_write(self, db: sqlite3.Connection) -> None:
        """Folds the WAL in if it must be; raises FoldPending, having written nothing
        else, if that cannot be done yet (tried at most every ``FOLD_RETRY`` s)."""
        if self._why is None:
            return
        now = time.monotonic()
        if now < self._next_try:
            raise self._pending("tried again shortly")
        self._next_try = now + FOLD_RETRY
        try:
            busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            self._kind = exc.sqlite_errorcode
            raise self._pending(f"the fold failed: {exc}") from exc
        if busy:  # a reader, or the checkpointer, was in the way
            raise self._pending("a reader was in its way")
        self._why = None

    def _pending(self, state: str) -> FoldPending:
        return FoldPending(
            f"its WAL must be folded into the database file before it takes writes, "
            f"since {self._why}; {state}",
            self._kind,
        )
