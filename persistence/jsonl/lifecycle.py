"""A session's files coming and going: creation, deletion, and the ones in progress;
and the removal of files kept aside as damaged.

Creation writes the checkpoint first (durably), then the empty log: a crash between
leaves a valid empty session. A delete waits until the session's queued appends are
written and its deletion is in the WAL (so a crash cannot feed the old events into a
new session of the same id), and until any checkpoint in progress is done (so nothing
recreates a file); then the checkpoint becomes a tombstone in one atomic rename
(synced), the other files go, then the tombstone: a crash midway leaves a delete the
next open finishes (``recovery.py``), never a half-deleted session; the deletes under
way together take these steps as one batch, each directory synced once for all of them
(``deletes.py``). The rename decides:
a delete fails only if it fails (or comes before it), and then leaves the session back,
and the WAL cancels the deletion (:meth:`SessionFiles.cancel_deletion`): no open
finishes a delete its caller was told failed. Once it is done the delete has taken
effect, so the caller is told so even when a file's removal then fails (logged; the
tombstone stays for the next open to finish). When the directory's sync fails the
rename is not known durable, nor after a later sync that succeeds (the kernel forgets a
reported error): with the WAL the deletion is recorded again and no segment is deleted
any more in this process, so the next open finishes it; ``os`` mode promises nothing
on a power cut; ``fsync`` mode without the WAL has nothing else to make it durable, so
the rename is undone and the delete fails; that rename back is not known durable
either, so the session takes no appends until the next open settles it (whole, or
after a power cut deleted whole: never without what it acknowledged). A create of an
id being deleted waits for the delete; one of an id whose delete kept its tombstone
finishes that delete first, or fails (``clear_unfinished_delete``): never a new
session over the old one's leftover.

A create that replaces an expired session writes the new checkpoint beside the old one
first (``<stem>.json.replacing``, durably): that decides the replacement, and an open
that finds the file finishes it (``recovery.py``). Then the old session is deleted as
above, then the new checkpoint takes its place, then its empty log is created. A crash
leaves the old session, or the new one: never the new metadata with the old events. A
failure partway (the WAL cannot record the deletion, a file cannot be renamed) is
undone: the ``.replacing`` file goes, durably, before any other create of the id (or
the id takes none until the next open finishes the replacement, if even that fails),
so a stale one never overrides a newer session at the next open. The old session is
back then if its files are, and stay: as after a failed delete, even when the id is
blocked (``expired_stays``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from bamboo_session.protocol.models import SessionMetadata

from ..base import DeletedNotDurably, StorageError
from . import checkpoint, deletes
from .checkpoint import Checkpoint, FileStamp, SlotFile
from .checkpointer import Checkpointer
from .deletes import DeleteBatches, DeleteUndone, Outcome, delete_session_files, finish_delete
from .files import fsync_dir, unlink_quietly
from .layout import Layout
from .record import SessionRecord
from .tasks import FileJobs, to_completion
from .writer import LogWriter

log = logging.getLogger(__name__)


class SessionFiles:
    def __init__(
        self,
        layout: Layout,
        checkpoints: Checkpointer,
        writer: LogWriter,
        jobs: FileJobs,
        sync_decides_delete: bool = False,
    ) -> None:
        self.layout = layout
        # ``fsync`` mode without the WAL: no deletion record, so a delete is durable by
        # its rename's directory sync alone, and fails when that fails (see the module).
        self._sync_decides_delete = sync_decides_delete
        self._jobs = jobs
        self._checkpoints = checkpoints
        self._writer = writer
        self.creating: set[str] = set()
        # Ids whose failed replacement could not be undone: no create until the next open.
        self.blocked: set[str] = set()
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._batches = DeleteBatches(self._delete_batch)
        self._ended = asyncio.Event()  # set whenever a create, replacement or delete ends

    async def wait_deleted(self, session_id: str) -> None:
        while (deleting := self._deleting.get(session_id)) is not None:
            await asyncio.shield(deleting)

    async def settled(self) -> None:
        """Return once no create, replacement or delete is under way: a close waits for
        them, so that no file of the store changes once its lock is released (and none
        fails for want of the threads the close shuts down)."""
        while self.creating or self._deleting:
            self._ended.clear()
            await self._ended.wait()

    def _created(self, session_id: str) -> None:
        """A create or replacement of ``session_id`` is over (done or failed)."""
        self.creating.discard(session_id)
        self._ended.set()

    def reserve(self, session_id: str) -> None:
        """Count a session as being created, before its :meth:`create` runs (so that
        concurrent creates see it against ``max_sessions`` and duplicates)."""
        self.creating.add(session_id)

    async def create(self, meta: SessionMetadata) -> SessionRecord:
        """The new (reserved) session's files, on disk when this returns, and its record
        (the caller runs it to completion: files without a record would be a session the
        storage does not know it has)."""
        try:
            await self._jobs.run(clear_unfinished_delete, self.layout, meta.id)
            slots, stamp = await self._checkpoints.create(meta)
        finally:
            self._created(meta.id)
        record = SessionRecord(meta, 0, 0, 0, stamp=stamp, slots=slots)
        record.index_checked = True  # no index file yet: nothing to check
        return record

    async def write_replacement(self, meta: SessionMetadata) -> tuple[SlotFile, FileStamp]:
        """The checkpoint of the new (reserved) session that replaces an expired one,
        beside the old one, durably (its slots and stamp, which its rename keeps);
        nothing else has changed when it fails (the file is removed again if it was
        renamed into place, unsynced: or else the id is :attr:`blocked`)."""
        try:
            path = self.layout.replacement(meta.id)
            return await self._jobs.run(checkpoint.create, path, Checkpoint(metadata=meta))
        except BaseException:
            try:
                await self._jobs.run(remove_replacement, self.layout, meta.id)
            except BaseException:
                self.blocked.add(meta.id)
                raise
            finally:
                self._created(meta.id)
            raise

    async def replace(
        self,
        old: SessionRecord | None,
        meta: SessionMetadata,
        written: tuple[SlotFile, FileStamp],
    ) -> SessionRecord:
        """After :meth:`write_replacement` (``written``): the (already forgotten)
        expired session's files deleted (None: a delete of them is done or under way),
        then the new one's in their place; its record (the caller runs it to
        completion, as for :meth:`create`).

        On failure the replacement is undone (:func:`abandon_replacement`): the old
        session is left as a failed delete leaves it (its checkpoint still there, or
        gone with the rest of its files), and no new one. If even that fails, the id
        is :attr:`blocked` until the next open, which finishes what is on disk: a
        create meanwhile would write files the stale replacement then overrides."""
        try:
            if old is not None:
                await self.delete(old)
            await self.wait_deleted(meta.id)
            await self._jobs.run(install_replacement, self.layout, meta.id, old is None)
        except BaseException:
            try:
                await self._jobs.run(abandon_replacement, self.layout, meta.id)
            except BaseException:
                self.blocked.add(meta.id)
                raise
            raise
        finally:
            self._created(meta.id)
        slots, stamp = written
        record = SessionRecord(meta, 0, 0, 0, stamp=stamp, slots=slots)
        record.index_checked = True
        return record

    def expired_stays(self, session_id: str, written: tuple[SlotFile, FileStamp]) -> bool:
        """After :meth:`replace` failed: whether the expired session is still there, as
        a failed delete leaves it, for the next open too: its checkpoint in place (not
        the replacement's, ``written``, which takes its place once the old files are
        gone), and no ``.replacing`` file that the next open would put over it. When the
        undoing failed too, the id is blocked, but the file may be gone all the same
        (removed, then its directory's sync failed): the old session stays then."""
        if self.layout.replacement(session_id).exists():
            return False
        try:
            inode = os.stat(self.layout.checkpoint(session_id)).st_ino
        except FileNotFoundError:
            return False
        return inode != written[1][0]

    async def delete(self, record: SessionRecord) -> None:
        """Delete the (already forgotten) session's files, to the end even if the
        caller is cancelled meanwhile."""
        session_id = record.session_id
        done = asyncio.get_running_loop().create_future()
        self._deleting[session_id] = done
        try:
            await to_completion(self._delete_after_writes(record))
        finally:
            del self._deleting[session_id]
            done.set_result(None)
            self._ended.set()

    async def cancel_deletion(self, record: SessionRecord) -> None:
        """After a failed delete, the session back: the WAL cancels the deletion it may
        have recorded, queued before anything else can be (this call does not yield
        until then), so that no open finishes a delete its caller was told failed."""
        try:
            cancelled = self._writer.cancel_deletion(
                record.session_id, record.meta.epoch, record.log_size, record.uncut
            )
            await asyncio.shield(cancelled)
        except Exception:  # the caller's error stands: this one is only logged
            # The WAL fails (appends fail too), or the store closes: a crash before
            # the session's next append reaches the WAL lets the next open finish it.
            log.exception("could not cancel the failed delete of %r", record.session_id)

    async def _delete_after_writes(self, record: SessionRecord) -> None:
        await self._writer.forget(record.session_id, record.meta.epoch)
        async with record.checkpoint_lock():
            try:
                synced = await self._batches.delete(record.session_id)
            except DeleteUndone:
                record.delete_undone = True  # before the caller can bring the record back
                self._writer.distrust_syncs()  # (sync_failed: a restart's open settles it)
                raise
            except DeletedNotDurably:
                # Not durable, as the False outcome below: taken with the same care.
                self._writer.distrust_syncs()
                raise
        if not synced:
            await self._record_deletion_again(record)
            # The sessions directory's later syncs prove nothing about this rename (the
            # kernel forgets a reported error): the WAL keeps the deletion until the
            # next open replays it, and no segment is deleted in this process.
            self._writer.distrust_syncs()

    async def _delete_batch(self, session_ids: list[str]) -> dict[str, Outcome]:
        """The file work of the deletes waiting together (``deletes.py``)."""
        # All the store's file threads but one, which stays for the reads of live sessions.
        threads = max(1, self._jobs.threads - 1)
        return await deletes.delete_in_shares(
            self._jobs.run, self.layout, session_ids, self._sync_decides_delete, threads
        )

    async def _record_deletion_again(self, record: SessionRecord) -> None:
        """The delete took effect but its rename is not synced: the WAL records the
        deletion again, in a segment retired only once the sessions directory is synced
        after the rename. The first record may be gone already: its segment retired
        while the delete waited for a checkpoint (its directory sync came before the
        rename), and a power cut would bring the session back, with nothing to finish
        its delete."""
        try:
            await self._writer.forget(record.session_id, record.meta.epoch)
        except Exception:  # the WAL fails too (then appends do), or the store closes
            log.exception(
                "session %r is deleted, but neither its rename nor a record of its "
                "deletion is durable: a power cut may bring it back",
                record.session_id,
            )


def install_replacement(layout: Layout, session_id: str, check_deleted: bool = False) -> None:
    """The replacement checkpoint in the (deleted) old one's place, then an empty log:
    what a create leaves, in the same order (recovery.py finishes it the same way).
    ``check_deleted``: the old session was deleted by another caller, whose delete may
    have failed and left its checkpoint (and log): then nothing is replaced."""
    if check_deleted and layout.checkpoint(session_id).exists():
        raise StorageError(f"the expired session {session_id!r} could not be deleted")
    clear_unfinished_delete(layout, session_id)
    os.replace(layout.replacement(session_id), layout.checkpoint(session_id))
    fsync_dir(layout.sessions)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    os.close(os.open(layout.log(session_id), flags, 0o644))
    fsync_dir(layout.events)


def remove_replacement(layout: Layout, session_id: str) -> None:
    """The ``.replacing`` checkpoint removed, durably, if it is there."""
    if unlink_quietly(layout.replacement(session_id)):
        fsync_dir(layout.sessions)


def abandon_replacement(layout: Layout, session_id: str) -> None:
    """Undo a replacement that failed partway, durably: the ``.replacing`` checkpoint
    removed (so that no open installs it over a session created later), or, if it
    took the old one's place already, the new session's files deleted (nothing knows
    of it). Whatever the old session's delete left stays as that left it."""
    try:
        os.unlink(layout.replacement(session_id))
    except FileNotFoundError:
        delete_session_files(layout, session_id)
        fsync_dir(layout.events)
    fsync_dir(layout.sessions)


def clear_unfinished_delete(layout: Layout, session_id: str) -> None:
    """Before a session of ``session_id`` is made: what a delete of the id left (its
    tombstone kept while a file stays) removed, or :class:`StorageError` naming what
    still stands. A new session made over it would take that file for its own (a
    directory where its message index goes left it unreadable once the store was
    opened again), and the delete would never be finished."""
    if not layout.tombstone(session_id).is_file():  # (a directory: in no create's way)
        return
    failed = finish_delete(layout, session_id)
    if failed:
        path, error = failed[0]
        raise StorageError(
            f"session {session_id!r} cannot be created: its earlier delete left {path}, "
            f"which cannot be removed ({error}); remove it and retry"
        )
    fsync_dir(layout.events)
    fsync_dir(layout.sessions)


def remove_damaged(layout: Layout) -> list[Path]:
    """Removes every file kept aside as damaged; returns those it removed."""
    removed = [path for path in layout.damaged_files() if unlink_quietly(path)]
    for directory in sorted({path.parent for path in removed}):
        fsync_dir(directory)
    return removed
