"""When and how the JSONL storage writes checkpoints, off the acknowledgement path.

A session is *dirty* when its log or its metadata moved since its last checkpoint. A
dirty session is checkpointed after ``checkpoint_every`` appends (a task spawned by the
writer's report, never awaited by an append), every ``checkpoint_interval`` seconds, and
on close. Such a periodic checkpoint first appends the message index entries written
since (derived data: a failure there is logged and repaired later), then writes the
metadata and log position in place, without a sync (``checkpoint.py``): a few hundred
bytes per checkpoint, whatever the length of the history. Those of sessions with no
index entries to append (a state or activity moved, events that are no messages) are
written ``CHUNK`` to a thread job: 100,000 sessions parked at a restart took 400 us of
the loop's work and a thread's each, written one by one (bench/restart_park.py).

Durable checkpoints are for what no log line can bring back: a session's creation
(``create``) and its moves to ``closed`` or ``expired``, and imported metadata
(``write(durable=True)``); they are on disk when they return.

A file's first write after the open goes over a slot only once the other one is known
on disk: by the open's sync of the file system (``open_sync.py``), which the writes of
many (``write_dirty``: a park's, a close's) wait for, or, for one written alone while
that sync has not returned (a session closed right after a restart), by a sync of its
own file first, as where no such sync is trusted: no single write waits seconds for
the whole file system.

Every lazy change's time goes to the store's clock mark (clock_mark.py) as it is made,
which each round syncs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final

from bamboo_session.protocol.models import SessionMetadata

from ..base import StorageError
from ..index import copy_metadata
from . import checkpoint, message_index
from .checkpoint import Checkpoint, Coverage, FileStamp, SlotFile
from .clock_mark import ClockMarkFile
from .config import JsonlStorageConfig
from .files import fsync_dir
from .open_sync import OpenSync
from .reads import HistoryReader
from .record import SessionRecord, check_settled
from .tasks import FileJobs, to_completion

log = logging.getLogger(__name__)

# Dirty sessions checkpointed at once by the periodic task and on close.
CONCURRENCY: Final = 16
# Checkpoints of metadata alone written by one thread job (a few milliseconds of it).
CHUNK: Final = 64

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Checkpointer:
    def __init__(
        self,
        config: JsonlStorageConfig,
        records: dict[str, SessionRecord],
        history: HistoryReader,
        spawn: Spawn,
        jobs: FileJobs,
        open_sync: OpenSync,
    ) -> None:
        self.config = config
        self.layout = config.layout
        self._records = records
        self._history = history
        self._spawn = spawn
        self._jobs = jobs
        self._open_sync = open_sync
        self.dirty: set[str] = set()
        # The newest time of a change written lazily: the next open's clock starts there.
        self.mark = ClockMarkFile(self.layout.base)

    # -- what the storage reports ----------------------------------------------------

    def changed(self, record: SessionRecord) -> None:
        """The session's metadata moved without a log line (state, activity)."""
        self.mark.wrote(record.meta.updated_at)  # before the caller goes on
        record.meta_dirty = True
        self.dirty.add(record.session_id)

    def changed_id(self, session_id: str) -> None:
        self.changed(self._records[session_id])

    def appended(self, record: SessionRecord) -> None:
        """Lines were written to the session's log."""
        self.dirty.add(record.session_id)
        # ``_behind``, inline: this runs at every append written.
        behind = record.meta.last_seq - record.checkpoint_seq >= self.config.checkpoint_every
        if behind and not record.checkpoint_pending:
            record.checkpoint_pending = True
            self._spawn(self._catch_up(record))

    def forget(self, session_id: str) -> None:
        self.dirty.discard(session_id)

    def _behind(self, record: SessionRecord) -> bool:
        return record.meta.last_seq - record.checkpoint_seq >= self.config.checkpoint_every

    async def _catch_up(self, record: SessionRecord) -> None:
        # Appends go on while a checkpoint is written; if they left it far behind
        # again, write the next one straight away.
        try:
            while self._records.get(record.session_id) is record and self._behind(record):
                await self.write(record.session_id)
        finally:
            record.checkpoint_pending = False

    # -- writing ---------------------------------------------------------------------

    async def create(self, meta: SessionMetadata) -> tuple[SlotFile, FileStamp]:
        """A new session's checkpoint and empty log, durably."""
        return await self._jobs.run(self._create_files, meta)

    def _create_files(self, meta: SessionMetadata) -> tuple[SlotFile, FileStamp]:
        # Checkpoint first: a crash before the log exists leaves a valid empty session
        # (the next open makes its log: recovery.py).
        found = checkpoint.create(self.layout.checkpoint(meta.id), Checkpoint(metadata=meta))
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        os.close(os.open(self.layout.log(meta.id), flags, 0o644))
        fsync_dir(self.layout.events)
        return found

    async def write(self, session_id: str, durable: bool = False) -> None:
        """Checkpoint the session if it is dirty (always, when ``durable``). A cancelled
        caller does not cut it short: the lock would be free while a thread still
        writes."""
        record = self._records.get(session_id)
        if record is not None:
            await to_completion(self._write(record, durable))

    async def _write(self, record: SessionRecord, durable: bool) -> None:
        session_id = record.session_id
        async with record.checkpoint_lock():
            if self._records.get(session_id) is not record:
                return
            if not record.is_dirty() and not durable:
                return
            if durable:  # a delete undone while this waited for the lock
                check_settled(record)
            await self._flush_index(record)
            # Taken together with no await in between: the metadata and the log position
            # describe the same point of the log. The index coverage may end before it:
            # messages appended while the flush wrote the entries are pending, for the
            # next checkpoint (after a crash, message_index.prepare reads them from the
            # log).
            meta = copy_metadata(record.meta)
            saved = Checkpoint(
                metadata=meta, log_offset=record.log_size, index=record.index,
                preamble=record.preamble,
            )  # fmt: skip
            record.meta_dirty = False
            on_disk = self._take_found_on_disk(record)
            try:
                record.slots, record.stamp = await self._jobs.run(
                    checkpoint.update, self.layout.checkpoint_file(session_id), saved, record.slots,
                    durable, on_disk,
                )  # fmt: skip
            except BaseException:
                record.meta_dirty = True
                raise
            record.checkpoint_seq, record.checkpoint_offset = meta.last_seq, saved.log_offset
            if not record.is_dirty():
                self.dirty.discard(session_id)

    def _take_found_on_disk(self, record: SessionRecord) -> bool:
        """Whether the file is known on disk as the open found it, for its write now
        (no await here: nothing comes between this and the write). Once written to (or
        maybe, if the write fails), the file is no longer as found. Unless the open's
        sync returned and succeeded, nothing of the file is known on disk: the write
        reads its slots again and syncs it first."""
        on_disk, record.found_on_disk = record.found_on_disk, False
        if on_disk and not self._open_sync.succeeded:  # (under way, or failed)
            record.slots = None
            return False
        return on_disk

    async def _flush_index(self, record: SessionRecord) -> None:
        """Append the pending message index entries to the file (derived data: a
        failure is logged, and the index is checked again before its next use)."""
        if not record.pending and record.index.offset == record.log_size:
            return
        try:
            await self._history.prepare_index(record)
            # From here to the append's start nothing awaits: the entries, the seq and
            # the log size describe the same point of the log.
            count = record.pending_count
            after = Coverage(record.index.count + count, record.meta.last_seq, record.log_size)
            if count:
                await self._jobs.run(
                    message_index.append,
                    self.layout.message_index(record.session_id),
                    record.meta.epoch,
                    record.index.count,
                    bytes(record.pending),
                )
        except StorageError as exc:
            log.warning("message index of session %r not written: %s", record.session_id, exc)
            record.index_checked = False
            return
        record.index_flushed(after, count)

    def behind(self) -> list[str]:
        """The dirty sessions whose checkpoint misses metadata or log lines."""
        records = self._records
        return [
            session_id
            for session_id in self.dirty
            if (record := records.get(session_id)) is not None and record.checkpoint_behind()
        ]

    async def write_dirty(self) -> None:
        """Checkpoint every dirty session, ``CONCURRENCY`` chunks at a time; failures are
        logged. As many workers, not a task per session: 100,000 sessions dirty at once
        (a restart's park, a busy server's close) made as many tasks in one turn of the
        loop, a stall of a second."""
        dirty = iter(list(self.dirty))

        async def worker() -> None:
            while chunk := list(itertools.islice(dirty, CHUNK)):
                try:
                    others = await self._write_chunk(chunk)
                except Exception:
                    log.exception("checkpoints of %d sessions failed", len(chunk))
                    continue
                for session_id in others:
                    try:
                        await self.write(session_id)
                    except Exception:
                        log.exception("checkpoint of session %r failed", session_id)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        await self._jobs.run(self.mark.sync)  # (its failure is the mark's own to say)

    async def _write_chunk(self, session_ids: list[str]) -> list[str]:
        """Checkpoints, in one thread job, those of the sessions whose checkpoint is
        their metadata alone and that no other write holds; the others, to be written
        one by one."""
        taken: list[tuple[SessionRecord, Checkpoint, bool]] = []
        others = []
        if any((r := self._records.get(i)) is not None and r.found_on_disk for i in session_ids):
            # Many files' first writes: one sync of them all beats a sync each. Before
            # anything is taken (the close cancels the periodic round).
            await self._open_sync.settled()
        for session_id in session_ids:
            record = self._records.get(session_id)
            if record is None or not record.is_dirty():
                continue
            lock = record.checkpoint_lock()
            if lock.locked():
                others.append(session_id)
                continue
            await lock.acquire()  # (free: taken at once, unless a waiter was woken)
            if self._records.get(session_id) is not record or not record.is_dirty():
                lock.release()  # deleted, or checkpointed, meanwhile
                continue
            if record.pending or record.index.offset != record.log_size:
                lock.release()
                others.append(session_id)
                continue
            saved = Checkpoint(
                metadata=copy_metadata(record.meta), log_offset=record.log_size,
                index=record.index, preamble=record.preamble,
            )  # fmt: skip
            record.meta_dirty = False
            taken.append((record, saved, self._take_found_on_disk(record)))
        if taken:
            await to_completion(self._write_taken(taken))
        return others

    async def _write_taken(self, taken: list[tuple[SessionRecord, Checkpoint, bool]]) -> None:
        """The checkpoints ``_write_chunk`` took (their locks held), then the locks freed."""
        try:
            written = await self._jobs.run(
                checkpoint.update_many,
                [(self.layout.checkpoint_file(r.session_id), saved, r.slots, on_disk)
                 for r, saved, on_disk in taken],
            )  # fmt: skip
        except BaseException:
            for record, _saved, _on_disk in taken:
                record.meta_dirty = True
                record.checkpoint_lock().release()
            raise
        for (record, saved, _on_disk), result in zip(taken, written, strict=True):
            if isinstance(result, Exception):
                record.meta_dirty = True
                log.error("checkpoint of session %r failed: %s", record.session_id, result)
            else:
                record.slots, record.stamp = result
                record.checkpoint_seq = saved.metadata.last_seq
                record.checkpoint_offset = saved.log_offset
                if not record.is_dirty():
                    self.dirty.discard(record.session_id)
            record.checkpoint_lock().release()
