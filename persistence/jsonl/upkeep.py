"""What the JSONL store does to its sessions besides serving them: deletes (one, or the
expired ones at cleanup), and the undoing of one that failed; the park at a restart of
what a dead server left attached (``ParksAttached``); the files kept aside as damaged.
A base of :class:`~.storage.JsonlStorage`, which sets what it uses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Final

from ..base import DeletedNotDurably, StorageError
from ..parking import attached_left_indexed, park_indexed
from .appends import WalKeptFull
from .deletes import DELETES_PER_BATCH
from .imports import JsonlImports
from .lifecycle import SessionFiles, remove_damaged
from .membership import Membership
from .record import SessionRecord

log = logging.getLogger(__name__)

# Deletes a cleanup round keeps under way at once: a batch's worth (``deletes.py``),
# whose file work is one job on one of the store's file threads, so that the reads of
# live sessions keep the others; the next batch gathers while one runs.
CLEANUP_DELETES_AT_ONCE: Final = DELETES_PER_BATCH


class JsonlUpkeep(JsonlImports):
    """Deletes, cleanup, the restart's park and the damaged files, through the storage's
    session files, membership, appender and checkpointer."""

    _files: SessionFiles
    _members: Membership

    # -- deletes and cleanup --------------------------------------------------------

    async def delete_session(self, session_id: str) -> None:
        self._require_writable()
        self._record(session_id)
        await self._remove(session_id)

    async def cleanup_expired_sessions(self) -> int:
        """Delete the expired sessions, ``CLEANUP_DELETES_AT_ONCE`` at a time: one at a
        time, each waited on syncs of its own (its deletion in the WAL, its directory's
        rename), 33 a second went: 25 minutes for 50,000 (bench/RESULTS.md, "Mass
        expiry under live load"); deletes under way together share the WAL's group
        commit, and their file work is one batch, one sync of each directory for all
        (``deletes.py``; 16 at once, each syncing alone, took 169 to 366 s for 50,000).
        One whose TTL ran out with an append under way is left to the next round
        (the append, taken before, renews it). One whose delete fails stays (it is as
        it was), is logged, and is tried again at the next round, after the others;
        one deleted but not durably (DeletedNotDurably: its tombstone, which the next
        open finishes) is counted, said once where it happened. Once the WAL kept since
        a failed sync passes its bound no delete is made, and the round ends."""
        self._require_writable()
        now = self._clock.now()
        pending = iter([meta.id for meta in self._index if meta.is_expired(now)])
        removed = 0
        wal_full = False

        async def remove_pending() -> None:
            nonlocal removed, wal_full
            for session_id in pending:
                if wal_full:
                    return
                record = self._records.get(session_id)
                if record is None or not record.meta.is_expired(now):
                    continue
                if record.renewal_pending():
                    # An append taken before the TTL ran out is being written:
                    # acknowledged, it renews the session, so deleting it now would
                    # lose an acknowledged event. The next round finds it renewed, or
                    # expired still if that append failed.
                    continue
                try:
                    await self._remove(session_id)
                except WalKeptFull:
                    wal_full = True  # (logged once: no delete is made until the next open)
                    return
                except DeletedNotDurably:
                    pass  # done, its tombstone left for the next open (logged as such)
                except StorageError as exc:
                    log.error("could not delete the expired session %r: %s", session_id, exc)
                    continue
                removed += 1

        await asyncio.gather(*(remove_pending() for _ in range(CLEANUP_DELETES_AT_ONCE)))
        if removed:
            log.info("removed %d expired sessions", removed)
        return removed

    async def _remove(self, session_id: str) -> None:
        """Forget the session, then delete its files once its queued appends and any
        checkpoint in progress are done (so neither can recreate a file). Refused
        before anything changes past the WAL's bound after a failed sync."""
        self._appends.check_wal_kept()
        record = self._members.forget(session_id)
        self._appends.deleting_now(record)
        try:
            await self._files.delete(record)
        except BaseException:
            await self._restore(record)
            raise
        finally:
            self._appends.deleted(record)

    async def _restore(self, record: SessionRecord) -> None:
        """After a delete (or a replacement) that failed: the session is still there on
        disk (the WAL could not record its deletion, or its files stay), so it is in
        memory and the index again, and the WAL cancels the deletion it may have
        recorded: the caller is told the delete failed, so no open may finish it."""
        session_id = record.session_id
        if session_id not in self._records and self.layout.checkpoint(session_id).exists():
            self._members.admit(record)
            self._checkpoints.changed(record)
            # Awaited at once: queued before any append to the session can be.
            await self._files.cancel_deletion(record)

    # -- the park at a restart ------------------------------------------------------

    def park_attached(self, since: datetime, batch: int) -> AsyncIterator[int]:
        self._require_writable()  # ParksAttached (persistence/parking.py): written lazily
        return park_indexed(self._index, self._clock, since, batch, self._checkpoints.changed_id)

    async def attached_left(self, since: datetime) -> bool:
        return attached_left_indexed(self._index, self._clock, since)

    # -- damaged files --------------------------------------------------------------

    async def damaged_files(self) -> list[Path]:
        """Files kept aside because they held damage (not an ordinary crash's torn or
        unacknowledged tail): for an operator to inspect, then clear."""
        return await asyncio.to_thread(self.layout.damaged_files)

    async def clear_damaged(self) -> list[Path]:
        """Removes the files :meth:`damaged_files` lists; returns them."""
        self._require_writable()
        return await self._jobs.run(remove_damaged, self.layout)
