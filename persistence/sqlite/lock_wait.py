"""WriteLockWait: the writer's ``BEGIN IMMEDIATE``, waiting for a write lock another
process holds (the ``sqlite3`` shell in a transaction, a tool writing to the file) as
SQLite's busy timeout would, but in a wait the store's close ends at once.

SQLite's own busy handler sleeps in its thread until the lock goes or the timeout
passes, and nothing ends that sleep sooner: ``Connection.interrupt()`` does not (the
busy handler does not look at it: a BEGIN IMMEDIATE interrupted 0.5 s into its wait
still waited out its 10 s, SQLite 3.40). A stop would then wait for another process
for up to the whole timeout, per batch still queued, and the process's exit for the
writer's thread after that. So the writer's connection has no busy timeout
(``schema.connect_writer``), and its thread waits here, on an event the close sets,
with SQLite's own steps between tries.

A wait given up leaves nothing behind: ``BEGIN IMMEDIATE`` never began, so nothing of
the batch was written, and the caller fails the batch as for any SQLite error (its
waiters get a StorageError, never an ack).

A WAL read lock another process holds (the read marks in the ``-shm`` file, taken by
hand) cannot be waited for here: SQLite retries it a hundred times, sleeping in
between, some 10 s in all, then fails (``locking protocol``), asking neither the busy
handler nor ``interrupt()`` (tests/test_sqlite_close_under_read_lock.py). Every
statement needs that lock first: a read's, a checkpoint's, the writer's. So the
store's close waits ``CLOSE_WAIT`` at most for the reads and the checkpoint under way
(they write nothing a caller waits for: their threads close their connections as they
end); the writer's batch it waits for, whatever it takes, since it may still commit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Final

# Seconds a batch waits for another process's write lock: SQLite's busy timeout before.
LOCK_WAIT: Final = 10.0
# Seconds the store's close waits for a read or a checkpoint under way, which may be in
# SQLite's wait for a read lock another process holds (above).
CLOSE_WAIT: Final = 1.0
# The sleeps between tries of SQLite's default busy handler, the last one repeated.
_STEPS: Final = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.025, 0.025, 0.05, 0.05, 0.1)


class WriteLockWait:
    """The writer's wait for the write lock; :meth:`end` ends every wait, then and
    later."""

    def __init__(self, patience: float = LOCK_WAIT) -> None:
        self.patience = patience
        self._ended = threading.Event()  # set by the store's close, from the event loop

    def end(self) -> None:
        """No more waiting for the lock: a wait under way ends now, and a later
        transaction gets one try. Thread-safe."""
        self._ended.set()

    def begin_after(self, db: sqlite3.Connection, refused: sqlite3.OperationalError) -> None:
        """``BEGIN IMMEDIATE`` on ``db`` (a connection without busy timeout), which
        ``refused`` (raised again unless it is SQLITE_BUSY: another connection holds the
        write lock); tried again for ``patience`` seconds at most, or until :meth:`end`:
        then the last try's SQLITE_BUSY error is raised. The first try is the caller's,
        in line: nothing more runs for a lock that is free."""
        if refused.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise refused
        deadline = time.monotonic() + self.patience
        for step in _steps():
            step = min(step, deadline - time.monotonic())
            if step <= 0 or self._ended.wait(step):
                raise refused
            try:
                db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                refused = exc


def _steps() -> Iterator[float]:
    yield from _STEPS
    while True:
        yield _STEPS[-1]
