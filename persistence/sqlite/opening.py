"""An SQLite store's parts opened in order, and closed again in reverse.

The open: the file prepared (read-only: only checked to be there), its lock taken
(shared when read-only: ``lock.py``), then the writer (whose open folds a WAL a crash
left: checkpoint.py), the checkpointer and the readers started, and the clock set from
the newest times the file holds (``clock_start.py``). Should any of it fail, what was
started is closed again, the lock released, and the failure raised as a StorageError.
The close: the readers, the checkpointer, then the writer, whose connection, the last
one, folds the WAL into the database file.
"""

from __future__ import annotations

import asyncio

from ..base import StorageError
from ..clock import StoreClock
from ..flock import StoreFlock
from .checkpoint import Checkpointer
from .clock_start import start_clock
from .config import SqliteStorageConfig
from .reads import Readers
from .schema import check_readable, prepare_path
from .writer import Writer


async def open_parts(
    config: SqliteStorageConfig,
    lock: StoreFlock,
    readers: Readers,
    writer: Writer | None,
    checkpointer: Checkpointer | None,
    clock: StoreClock,
) -> None:
    """Opens the store's parts (no writer or checkpointer when read-only), or leaves
    none of them open and the lock released."""
    path = config.path
    await asyncio.to_thread(prepare_path, path, config.read_only)
    if config.read_only:
        lock.take_shared()
    else:
        lock.take_exclusive()
    try:
        if config.read_only:
            await asyncio.to_thread(check_readable, path)
        if writer is not None:
            await writer.start()
        if checkpointer is not None:
            await checkpointer.start()
        await readers.start()
        await start_clock(readers, clock, path)
    except BaseException as exc:
        await close_parts(readers, checkpointer, writer)
        lock.release()
        if isinstance(exc, StorageError | asyncio.CancelledError):
            raise
        raise StorageError(f"cannot open SQLite store {path}: {exc}") from exc


async def close_parts(
    readers: Readers, checkpointer: Checkpointer | None, writer: Writer | None
) -> None:
    """Closes the store's connections, the writer's last: it folds the WAL in. The
    caller releases the lock after."""
    await readers.close()
    if checkpointer is not None:
        await checkpointer.close()
    if writer is not None:
        await writer.close()
