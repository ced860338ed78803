"""Opening a JSONL store, and what its clean close leaves for the next open.

For writing, the directory is created if need be and locked (``LOCK``: one writer at a
time). Then the store's format is checked (``store_format.py``: a newer one is refused
untouched, a format-1 store is moved to format 2), before the storage's parts are
made, so that they name the files as the store has them (``old_names``). Then
recovery (``recovery.py``) runs in a worker thread, the file system to sync once is
found (so that no checkpoint file on it needs a sync of its own before its first write
over a slot: ``checkpoint.py``, where that holds: ``fs_sync.py``; the sync runs once
the open returned: ``open_sync.py``), and its sessions become
:class:`~.record.SessionRecord` objects. A clean close writes the index snapshot from
the records.

Read-only (``JsonlStorageConfig.read_only``, ``open_storage(url, read_only=True)``) is
for offline tools. It opens an existing store only (a directory without ``sessions/``
and ``events/`` is refused, naming it), creates and changes nothing (not even
``LOCK``), and the storage refuses every write with ``StorageError``. It neither waits
for a server that holds the store nor takes the lock from it, nor stops one from
starting later: it reads the files as they are, without repair (a torn tail is left
out, WAL segments are not replayed, a lazily written state may be older), a
best-effort view; the log names the process that holds the store, if any.

Read-only and offline (``offline=True``: the source of a migrate, ``recount``) refuses
a store a server holds, and takes ``LOCK`` shared (creating it if need be) until it
closes, so that no server starts on the store meanwhile (its exclusive lock is
refused, naming a reader), while other offline readers may share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..base import StorageError, StorageLocked
from ..flock import LockWording, StoreFlock
from . import snapshot
from .config import JsonlStorageConfig
from .fs_sync import device_to_sync
from .record import SessionRecord
from .recovery import RecoveryReport, recover
from .store_format import FORMAT, check_format

log = logging.getLogger(__name__)


def store_lock(config: JsonlStorageConfig) -> StoreFlock:
    """The (not yet taken) lock of the store, on its ``LOCK`` file."""
    base, path = config.base_path, config.layout.lock
    return StoreFlock(
        path,
        LockWording(
            store=f"the store at {base}",
            refusal=lambda holder: (
                f"storage at {base} is in use: {path} is locked by {holder}; "
                "stop it before opening this directory again"
            ),
            readers="a reader (a migrate copying the store, or an offline tool)",
            writer="another JsonlStorage",
        ),
    )


async def take_store(
    config: JsonlStorageConfig, lock_file: StoreFlock
) -> tuple[JsonlStorageConfig, int]:
    """Lock (unless read-only) and check the store's format (a format-1 store opened
    for writing is moved to format 2 there): the config that names its files as they
    are (``old_names``), and the format. The lock is released on failure."""
    base, layout = config.base_path, config.layout
    if config.read_only:
        if not await asyncio.to_thread(layout.is_store):
            raise StorageError(
                f"{base} is not a bamboo JSONL store (it has no sessions/ and events/ "
                "directories); a read-only open does not create one"
            )
        if config.offline:
            await asyncio.to_thread(_share, lock_file, base)
        elif (holder := await asyncio.to_thread(lock_file.holder_pid)) is not None:
            log.info("read-only: %s is in use by pid %d; reading it as it is", base, holder)
    else:
        await asyncio.to_thread(_make_directory, base)
        lock_file.take_exclusive()
    try:
        # Before anything is read or repaired: a newer format is refused untouched.
        found = await asyncio.to_thread(check_format, layout, not config.read_only)
    except BaseException:
        lock_file.release()
        raise
    return config.with_old_names(found < FORMAT), found


async def open_files(config: JsonlStorageConfig, lock_file: StoreFlock) -> RecoveryReport:
    """Recover the store :func:`take_store` took; the lock is released on failure."""
    try:
        with gc_paused():
            report = await asyncio.to_thread(recover, config)
        if not config.read_only and report.sessions:
            await asyncio.to_thread(_find_device_to_sync, config, report)
        return report
    except BaseException:
        lock_file.release()
        raise


def _find_device_to_sync(config: JsonlStorageConfig, report: RecoveryReport) -> None:
    """The device whose one sync (``syncfs``) stands for a sync of each checkpoint file
    on it (``report.device_to_sync``), so that each session's first checkpoint after
    the open needs no sync of its file (checkpoint.py): after a restart with 100,000
    sessions to park, the close that wrote them took 34 s, a ``fdatasync`` each. The
    sync itself runs once the open returned (``open_sync.py``). None where one sync
    cannot stand for those of the files (fs_sync.py), or when the directory cannot be
    opened: then the first write of each file syncs it, and the failure (a directory
    of the store unreadable) is the store's failed sync (``sync_failed``), logged."""
    try:
        report.device_to_sync = device_to_sync(config.layout.sessions)
    except OSError as exc:
        log.error(
            "could not open the store's sessions directory to sync its file system (%s): "
            "its checkpoints are synced file by file, and every WAL segment is kept "
            "until a restart",
            exc,
        )
        report.file_system_sync_failed = True


def _share(lock_file: StoreFlock, base: Path) -> None:
    holder = lock_file.holder_pid()
    try:
        lock_file.take_shared()
    except StorageLocked:
        who = f"pid {holder}" if holder is not None else "a server"
        raise StorageLocked(f"store at {base} is in use by {who}; stop that server first") from None


def _make_directory(base: Path) -> None:
    """The store's directory, made if need be; one line saying why not otherwise (a
    file in its place, a parent the process may not write to)."""
    try:
        base.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StorageError(f"{base} is a file, not a directory: not a JSONL store") from None
    except OSError as exc:
        raise StorageError(f"cannot create the store directory {base}: {exc.strerror}") from None


def records_of(report: RecoveryReport) -> Iterator[SessionRecord]:
    """The records of the sessions recovery found (it keeps none of them)."""
    found, report.sessions = report.sessions, []
    to_sync = report.device_to_sync
    with gc_paused():
        for session in found:
            record = SessionRecord(
                session.metadata,
                session.checkpoint_seq,
                session.checkpoint_offset,
                session.log_size,
                session.index,
                session.pending,
                session.preamble,
                session.stamp,
            )
            record.preamble_messages = session.preamble_messages
            # On the device the open syncs (or written, durably, by the open): as found,
            # on disk once that sync returned (the first write waits: open_sync.py).
            if to_sync is not None and session.device in (None, to_sync):
                record.found_on_disk, record.slots = True, session.slots
            yield record


def snapshot_entries(records: Iterable[SessionRecord]) -> list[snapshot.SnapshotEntry]:
    """What the index snapshot holds of each checkpointed session."""
    with gc_paused():
        return [
            snapshot.SnapshotEntry(
                record.meta, record.log_size, record.index, record.preamble, record.stamp
            )
            for record in records
            if record.stamp is not None
        ]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while 100,000s of objects are made at once
    (open, snapshot): none of them is garbage, yet each full collection would walk them
    all, which costs about a third of the time of an open."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
