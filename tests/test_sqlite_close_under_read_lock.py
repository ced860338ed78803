"""SQLite: the store's close while another process holds the WAL's read locks (the read
marks in the ``-shm`` file, taken by hand with ``fcntl``), with a read waiting for one.

SQLite retries a read lock some 10 s, sleeping in between, then fails the statement
(``locking protocol``), and nothing in the process ends that wait sooner: neither
``interrupt()`` nor the busy timeout (the first test shows it on a bare connection).
So the read cannot be ended; what the close does is not wait for it past
``CLOSE_WAIT``, nor for the checkpointer, whose checkpoint waits for the same lock.
Before, the close waited out the read (and the checkpoint), 10.6 s. The read still
fails with a StorageError, its thread closes its connection, and once the locks are
gone the next open has everything, the file sound."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.sqlite.lock_wait import CLOSE_WAIT
from tests.stalled_disks_support import holding
from tests.test_sqlite_close_under_lock import ACKED, store_with_acked
from tests.test_stalled_disks import HOLD_READ_LOCKS

SQLITE_RETRIES = 9.0  # seconds SQLite's read-lock retries take at least (some 10 s)
SLACK = 2.0  # seconds a loaded machine may add to a bound


def test_sqlite_ends_a_wait_for_a_held_read_lock_neither_on_interrupt_nor_by_timeout(
    tmp_path: Path,
) -> None:
    """Why the close leaves the read to its thread: on a connection with no busy
    timeout, interrupted 0.2 s in, the read waits out SQLite's retries all the same."""
    path = tmp_path / "bare.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE t (x)")
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    reader.execute("PRAGMA busy_timeout = 0")

    async def read_under_held_locks() -> tuple[str | None, float]:
        async with holding(HOLD_READ_LOCKS, f"{path}-shm"):
            threading.Timer(0.2, reader.interrupt).start()
            started = time.monotonic()
            with pytest.raises(sqlite3.OperationalError) as failed:
                await asyncio.to_thread(reader.execute, "SELECT count(*) FROM t")
            return failed.value.sqlite_errorname, time.monotonic() - started

    try:
        name, took = asyncio.run(read_under_held_locks())
    finally:
        reader.close()
    assert name == "SQLITE_PROTOCOL" and took > SQLITE_RETRIES, (name, took)


async def test_a_close_does_not_wait_for_a_read_another_process_keeps_from_its_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite://{path}"
    store = await store_with_acked(path)
    async with holding(HOLD_READ_LOCKS, f"{path}-shm"):
        reading = asyncio.ensure_future(store.read_events("s"))
        await asyncio.sleep(0.3)
        assert not reading.done()  # waiting in SQLite for a read lock
        started = time.monotonic()
        await asyncio.wait_for(store.close(), 4 * SQLITE_RETRIES)
        took = time.monotonic() - started
        with pytest.raises(StorageError, match="locking protocol"):
            await asyncio.wait_for(reading, 4 * SQLITE_RETRIES)
    # The read's and the checkpoint's, one after the other, at most.
    assert took < 2 * CLOSE_WAIT + SLACK, took
    async with await open_storage(url) as again:
        events = await again.read_events("s")
        assert [event.key for event in events] == [f"k{n}" for n in range(1, ACKED + 1)]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
