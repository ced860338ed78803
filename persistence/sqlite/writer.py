"""The SQLite store's group commit: one connection on one thread writes everything.

Writes from every session queue up while the previous transaction commits. The writer
then takes the whole queue as one batch and runs it in one transaction (``BEGIN
IMMEDIATE`` .. ``COMMIT``) on its thread, so the event loop never waits on the disk and
one WAL sync (``synchronous=FULL``) covers every write of the batch. Only after the
commit are the writes acknowledged: each operation's ``after`` hook runs on the event
loop (that is where the store publishes to its Feed), then its future resolves.

Operations run in the order they were submitted, so seqs follow call order. An
operation refused on its own (session not found, closed, expired...) fails alone; an
SQLite error (disk full, I/O error) rolls the batch back and fails every operation in
it with a StorageError: nothing of a failed batch is stored, nothing is acknowledged.
A batch waits for a write lock another process holds for ``LOCK_WAIT`` seconds (then
fails so), and not at all once the store closes (lock_wait.py).
The next batch starts again from what the file holds; after a disk full or an I/O
error, by folding the WAL into the database file (checkpoint.py's WalFold; the open
folds a WAL a crash left too): while that fails for want of space, batches fail without
writing, so that space freed on a full disk goes to the fold, not to a WAL that would
fill it again. Readers in the fold's way never hold the writes.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from bamboo_session.protocol.errors import InvalidSessionId, InvalidTransition
from bamboo_session.tasks import detached
from bamboo_session.wakeup import Wakeup

from ..base import StorageError
from ..clock import StoreClock
from ..failure_log import FailureLog
from .batch import Batch
from .checkpoint import FoldPending, WalFold
from .lock_wait import WriteLockWait
from .rows import RowCache

log = logging.getLogger(__name__)

T = TypeVar("T")

# Operations in one transaction at most: bounds the time a batch holds its callers.
MAX_BATCH: Final = 4096
# Sessions whose rows the writer keeps between batches.
ROW_CACHE: Final = 16_384
# What an operation may raise on its own, before it has changed anything.
REFUSALS: Final = (StorageError, InvalidSessionId, InvalidTransition, ValueError)


class _Op(Generic[T]):
    __slots__ = ("after", "future", "work")

    def __init__(
        self,
        work: Callable[[Batch], T],
        after: Callable[[T], None] | None,
        future: asyncio.Future[T],
    ) -> None:
        self.work = work
        self.after = after
        self.future = future


class Writer:
    """Runs submitted operations in batches, one transaction each (group commit)."""

    def __init__(
        self, path: Path, connect: Callable[[], sqlite3.Connection], clock: StoreClock
    ) -> None:
        self._path = path
        self._connect = connect
        self._clock = clock  # each batch's time: its rows' and events'
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bamboo-sqlite-write")
        self._db: sqlite3.Connection | None = None
        self._queue: list[_Op[Any]] = []
        self._wakeup = Wakeup()  # by submit, while idle: once per transaction
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._session_count: int | None = None  # known after a batch counted them
        self._rows = RowCache(ROW_CACHE)
        self._failures = FailureLog(log, f"writes to {path}")  # once per outage
        self._fold = WalFold()
        self._lock_wait = WriteLockWait()
        self.batches = 0  # for tests and benchmarks: transactions committed or failed

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._thread, self._connect)
        await loop.run_in_executor(self._thread, self._fold.at_open, self._db)
        self._task = detached(self._run(), name="bamboo-sqlite-writer")

    def submit(
        self, work: Callable[[Batch], T], after: Callable[[T], None] | None = None
    ) -> asyncio.Future[T]:
        """Queue ``work(batch)``; the future resolves with its result once its batch is
        committed (``after(result)`` has run by then), or fails."""
        if self._closing or self._task is None:
            raise StorageError(f"SQLite store at {self._path} is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Op(work, after, future))
        self._wakeup.set()
        return future

    async def flush(self) -> None:
        """Return once everything submitted before is committed (or failed)."""
        await self.submit(lambda batch: None)

    async def close(self) -> None:
        """Commit what is queued, then close the connection (which checkpoints the
        WAL into the database file). While another process holds the write lock, what
        is queued fails at once instead (nothing of it stored, its callers told): a
        stop does not wait for another process (lock_wait.py)."""
        if self._closing:
            return
        self._closing = True
        self._lock_wait.end()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._db is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._thread, self._db.close)
            self._db = None
        self._thread.shutdown()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                await self._wakeup.wait()
                continue
            # In a coroutine of its own: no local of this loop keeps the batch (every
            # event of it, encoded and decoded) while the next one is awaited, for as
            # long as the store is idle, counted by no bound.
            await self._commit_next(loop)

    async def _commit_next(self, loop: asyncio.AbstractEventLoop) -> None:
        ops = self._queue[:MAX_BATCH]
        del self._queue[:MAX_BATCH]
        try:
            outcomes = await loop.run_in_executor(self._thread, self._write, ops)
        except Exception as exc:
            self._fail(ops, exc)
        else:
            self._failures.succeeded(str(self._path))  # its one source
            self._settle(ops, outcomes)
        finally:
            self.batches += 1

    # -- the writer thread -------------------------------------------------------------

    def _write(self, ops: list[_Op[Any]]) -> list[tuple[bool, Any]]:
        db = self._db
        assert db is not None
        self._fold.before_write(db)
        count_before = self._session_count
        batch: Batch | None = None
        outcomes: list[tuple[bool, Any]] = []
        try:
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as refused:  # another process holds the lock
                self._lock_wait.begin_after(db, refused)
            # Its time once the write lock is held: the wait for it (another connection
            # writing, up to LOCK_WAIT) would have aged every time it writes, a
            # session made now expired on its creation if its TTL was shorter (h417).
            batch = Batch(db, self._clock.stamp(), self._rows, count_before)
            for op in ops:
                try:
                    outcomes.append((True, op.work(batch)))
                except REFUSALS as exc:
                    outcomes.append((False, exc))
            batch.flush()
            db.execute("COMMIT")
        except BaseException as exc:
            # Nothing of the batch stays: the count is the one at its start again, and
            # the rows it changed in memory are dropped.
            self._session_count = count_before if batch is None else batch.session_count
            self._rows.clear()
            self._rollback(db)
            if isinstance(exc, sqlite3.Error):
                self._fold.failed(exc)
            raise
        count = batch.session_count
        self._session_count = None if count is None else count + batch.session_delta
        return outcomes

    def _rollback(self, db: sqlite3.Connection) -> None:
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("rollback on %s failed (%s); reconnecting the writer", self._path, exc)
            db.close()
            self._db = self._connect()

    # -- back on the event loop ----------------------------------------------------------

    def _settle(self, ops: list[_Op[Any]], outcomes: list[tuple[bool, Any]]) -> None:
        for op, (ok, value) in zip(ops, outcomes, strict=True):
            if ok:
                if op.after is not None:
                    try:
                        op.after(value)
                    except Exception:
                        log.exception("after-commit hook failed")
                if not op.future.done():
                    op.future.set_result(value)
            elif not op.future.done():
                op.future.set_exception(value)

    def _fail(self, ops: list[_Op[Any]], exc: Exception) -> None:
        if isinstance(exc, sqlite3.Error | FoldPending):
            kind = exc.sqlite_errorcode if isinstance(exc, sqlite3.Error) else exc.kind
            self._failures.failed(
                str(self._path),
                f"a write to {self._path} failed: {exc}; nothing of its batch was stored",
                kind,
            )
        else:
            log.error("a write to %s failed", self._path, exc_info=exc)
        reason = (
            f"could not write to the SQLite store at {self._path}: {exc}; "
            "nothing of this call was stored"
        )
        for op in ops:
            if not op.future.done():
                op.future.set_exception(StorageError(reason))
