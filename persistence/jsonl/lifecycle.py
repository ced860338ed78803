"""A session's files coming and going: creation, deletion, and the ones in progress;
and the removal of files kept aside as damaged.

Creation writes the checkpoint first (durably), then the empty log: a crash between
leaves a valid empty session. A delete waits until the session's queued appends are
written and its deletion is in the WAL (so a crash cannot feed the old events into a
new session of the same id), and until any checkpoint in progress is done (so nothing
recreates a file); then the checkpoint becomes a tombstone in one atomic rename
(synced), the other files go, then the tombstone: a crash midway leaves a delete the
next open finishes (``recovery.py``), never a half-deleted session. A create of an id
being deleted waits for the delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import timedelta
from pathlib import Path

from bamboo_session.protocol.models import SessionMetadata

from ..index import copy_metadata
from .checkpointer import Checkpointer
from .files import fsync_dir, unlink_quietly
from .layout import Layout
from .record import SessionRecord
from .tasks import FileJobs, to_completion
from .writer import LogWriter


class SessionFiles:
    def __init__(
        self, layout: Layout, checkpoints: Checkpointer, writer: LogWriter, jobs: FileJobs
    ) -> None:
        self.layout = layout
        self._jobs = jobs
        self._checkpoints = checkpoints
        self._writer = writer
        self.creating: set[str] = set()
        self._deleting: dict[str, asyncio.Future[None]] = {}

    async def wait_deleted(self, session_id: str) -> None:
        while (deleting := self._deleting.get(session_id)) is not None:
            await asyncio.shield(deleting)

    def reserve(self, session_id: str) -> None:
        """Count a session as being created, before its :meth:`create` runs (so that
        concurrent creates see it against ``max_sessions`` and duplicates)."""
        self.creating.add(session_id)

    async def create(self, meta: SessionMetadata) -> SessionRecord:
        """The new (reserved) session's files, on disk when this returns, and its record
        (the caller runs it to completion: files without a record would be a session the
        storage does not know it has)."""
        try:
            slots, stamp = await self._checkpoints.create(meta)
        finally:
            self.creating.discard(meta.id)
        record = SessionRecord(meta, 0, 0, 0, stamp=stamp, slots=slots)
        record.index_checked = True  # no index file yet: nothing to check
        return record

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

    async def _delete_after_writes(self, record: SessionRecord) -> None:
        await self._writer.forget(record.session_id, record.meta.epoch)
        async with record.checkpoint_lock():
            await self._jobs.run(delete_session_files, self.layout, record.session_id)


def new_metadata(given: SessionMetadata, default_ttl: int | None) -> SessionMetadata:
    """A new session's metadata: the caller's, with a new log's counts and the store's
    default TTL if it has none."""
    meta = copy_metadata(given)
    meta.last_seq = 0  # a new log; whatever the caller set does not describe it
    meta.message_count = 0
    if meta.ttl is None and default_ttl is not None:
        meta.ttl = default_ttl
        meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
    return meta


def delete_session_files(layout: Layout, session_id: str) -> None:
    tombstone = layout.tombstone(session_id)
    with contextlib.suppress(FileNotFoundError):
        os.replace(layout.checkpoint(session_id), tombstone)
    fsync_dir(layout.sessions)
    for path in layout.session_files(session_id):
        unlink_quietly(path)
    unlink_quietly(tombstone)


def remove_damaged(layout: Layout) -> list[Path]:
    """Removes every file kept aside as damaged; returns those it removed."""
    removed = [path for path in layout.damaged_files() if unlink_quietly(path)]
    for directory in sorted({path.parent for path in removed}):
        fsync_dir(directory)
    return removed
