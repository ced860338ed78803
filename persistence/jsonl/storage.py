"""JsonlStorage: the storage contract (``persistence/base.py``) on JSONL event logs.

Appends go through ``appends.py`` (seqs in call order, keys, the group-commit writer),
checkpoints through ``checkpointer.py`` (off the acknowledgement path, but creation, a
move to closed or expired, and imported metadata are on disk when they return); every
read is :class:`~.queries.JsonlQueries`'s (through ``reads.py``), every import
(``SessionImport``) :class:`~.imports.JsonlImports`'s, deletes, cleanup, the
restart's park and the damaged files :class:`~.upkeep.JsonlUpkeep`'s, and creates and
replacements :class:`~.creations.JsonlCreations`', its bases; the history is the
log's ``message`` events. A session's files come and go through ``lifecycle.py``, what
is kept of it in memory through ``membership.py``. Expired sessions (sliding TTL)
refuse ``load_session``, histories and appends with :class:`SessionExpired`; their
metadata and events stay readable until cleanup.

Read-only (``open_storage(url, read_only=True)``): no lock, nothing created, changed or
repaired, every write refused; a best-effort view beside a running server
(``opening.py`` says why that choice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, Self

from bamboo_session.protocol.models import (
    Message,
    MessageEvent,
    SessionMetadata,
    SessionState,
)
from bamboo_session.tasks import detached

from ..base import (
    Appended,
    AppendItem,
    AppendOne,
    SessionClosed,
    StorageError,
)
from ..capabilities import DiskDebt
from ..close_once import CloseOnce
from ..feed import CLOSED
from ..flock import StoreFlock
from ..index import copy_metadata
from ..state_condition import check_condition, updated_since
from . import snapshot
from .appends import Appender
from .checkpointer import Checkpointer
from .config import JsonlStorageConfig
from .creations import JsonlCreations
from .lifecycle import SessionFiles
from .membership import Membership
from .open_sync import OpenSync
from .opening import open_files, records_of, snapshot_entries, store_lock, take_store
from .record import SessionRecord, check_settled
from .recovery import RecoveryReport
from .store_format import FORMAT
from .tasks import BackgroundTasks, every, to_completion

log = logging.getLogger(__name__)

# States with no log line to recover them from: on disk before the change returns.
_FINAL_STATES: Final = frozenset({SessionState.CLOSED, SessionState.EXPIRED})
# Read once: a member read off its class goes through EnumType.__getattr__ on Python
# 3.11 (about 850 machine instructions), and every append asks.
_CLOSED: Final = SessionState.CLOSED
_EXPIRED: Final = SessionState.EXPIRED


class JsonlStorage(JsonlCreations, AppendOne):
    """Sessions, histories and event logs in plain files under one directory.

    Open with ``await JsonlStorage.open(config)`` (or ``async with``); only one storage
    may have a directory open for writing at a time (:class:`StorageLocked`)."""

    store_format = f"jsonl/{FORMAT}"  # StoreFormat: as the open found it (set there)
    appends_in_process = True  # AppendsInProcess: no network under an append

    def __init__(self, config: JsonlStorageConfig, lock_file: StoreFlock, found: int) -> None:
        """Made by :meth:`open`, once the store is taken (``lock_file``) and its format
        ``found``: ``config`` names its files as they are."""
        super().__init__(config)  # the records, index, feed and caches reads use
        self._lock_file = lock_file
        self.store_format = f"jsonl/{found}"
        self._tasks = BackgroundTasks()
        self._open_sync = OpenSync()  # of the checkpoints' file system, once open
        self._checkpoints = Checkpointer(
            config, self._records, self._history, self._tasks.spawn, self._jobs, self._open_sync
        )
        self._appends = Appender(
            config,
            self._records,
            self._checkpoints,
            self._messages,
            self._feed,
            self._jobs,
            self._clock,
        )
        self._writer = self._appends.writer
        self._files = SessionFiles(
            self.layout, self._checkpoints, self._writer, self._jobs, config.sync_decides_delete
        )
        self._members = Membership(
            self._records, self._index, self._feed, self._messages, self._appends, self._checkpoints
        )
        self._loops: list[asyncio.Task[None]] = []
        self._ready = False
        self._closing = CloseOnce()
        self.recovery: RecoveryReport | None = None  # what open found and repaired

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(cls, config: JsonlStorageConfig) -> Self:
        """Lock the directory, repair what a crash left, build the index, start (or,
        read-only: read what is there)."""
        lock_file = store_lock(config)
        named, found = await take_store(config, lock_file)
        try:
            storage = cls(named, lock_file, found)
        except BaseException:
            lock_file.release()
            raise
        await storage._open()
        return storage

    async def _open(self) -> None:
        self.recovery = await open_files(self.config, self._lock_file)
        for record in records_of(self.recovery):
            self._members.admit(record)  # (each user's sum, rebuilt from the logs)
            meta = record.meta
            self._clock.saw(meta.updated_at, meta.last_activity_at, where=self._files_of(meta.id))
            if record.is_dirty() and not self._read_only:
                self._checkpoints.dirty.add(record.session_id)
        if self._read_only:
            return
        # (clock_mark.py: a mark far past the machine's clock and the files' is left out)
        mark = await asyncio.to_thread(self._checkpoints.mark.open, self._clock.now())
        self._clock.saw(mark)
        self._writer.start()
        if self.recovery.file_system_sync_failed:  # (opening.py: as a failed sync here)
            self._writer.distrust_syncs()
        if (device := self.recovery.device_to_sync) is not None:
            self._writer.retirement.hold_until(self._open_sync.settled)
            self._open_sync.start(self.layout.sessions, device, self._writer.distrust_syncs)
        loops: list[tuple[float, Callable[[], Awaitable[object]], str]] = [
            (self.config.checkpoint_interval, self._checkpoints.write_dirty, "checkpoints")
        ]
        if self.config.cleanup_interval is not None:
            loops.append((self.config.cleanup_interval, self.cleanup_expired_sessions, "cleanup"))
        self._loops = [
            detached(every(seconds, work, what), name=f"bamboo-{what}")
            for seconds, work, what in loops
        ]
        self._ready = True

    async def close(self) -> None:
        """Let the creates, replacements and deletes under way end, write pending
        appends, checkpoint every dirty session, save the index snapshot, release the
        lock. Safe to call twice: a call made while another closes returns once that
        close has ended (CloseOnce)."""
        await self._closing.run(self._close)

    async def _close(self) -> None:
        self._ready = False
        self._feed.end_all()
        if self._read_only:
            await self._writer.close()
            self._lock_file.release()  # an offline reader's shared lock
            self._jobs.shutdown(wait=False)
            return
        try:
            try:  # the writer closed whatever the close is cancelled at, before the lock goes
                for task in self._loops:
                    task.cancel()
                await asyncio.gather(*self._loops, return_exceptions=True)
                # Creates, replacements and deletes under way end first, with the writer
                # still taking their deletions and the threads their files.
                await self._files.settled()
                await self._writer.flush()
                await self._tasks.wait()
                await self._checkpoints.write_dirty()
                await self._open_sync.settled()  # (no thread of the store outlives it)
            finally:
                await self._writer.close()
            # A session whose index entries alone failed is checkpointed all the same.
            if not (behind := self._checkpoints.behind()):
                entries = snapshot_entries(self._records.values())
                # Written before the lock goes, even if the close is cancelled: a
                # process that opened meanwhile would see a stale snapshot come back.
                await to_completion(asyncio.to_thread(snapshot.write, self.layout, entries))
            else:
                log.error("%d sessions could not be checkpointed on close", len(behind))
        finally:
            try:  # (whatever the close reached)
                await to_completion(asyncio.to_thread(self._checkpoints.mark.close))
            finally:
                self._lock_file.release()
                # Not waited for: a job of a disk that stalls would hold the close as long.
                self._jobs.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        """Open and accepting appends (never, when read-only)."""
        return self._ready

    @property
    def sync_failed(self) -> bool:
        """A sync failed in this process (``SyncHealth``): from then on every WAL
        segment stays, growing until the next open replays them; a restart brings it."""
        return self._writer.retirement.stopped

    def disk_debt(self) -> DiskDebt:  # OwesTheDisk: what a stop that cannot end names
        return self._writer.disk_debt()

    def write_locations(self) -> tuple[Path, ...]:  # WriteLocations: what /readyz probes
        return self.config.append_directories

    # -- sessions -------------------------------------------------------------------

    async def update_session_state(
        self,
        session_id: str,
        state: SessionState,
        *,
        epoch: str | None = None,
        unless_updated_since: datetime | None = None,
    ) -> SessionMetadata:
        """Closed and expired are on disk when this returns; moves among the live states
        go to disk with the session's next checkpoint (a crash ends connections anyway).
        The epoch and the condition are checked with no await before the move."""
        self._require_writable()
        check_condition(state, unless_updated_since)
        record = self._record(session_id, epoch)
        record.meta.state.check_transition(state)
        if state != SessionState.EXPIRED:
            self._check_not_expired(record)  # a state change does not revive a session
        if updated_since(record.meta.updated_at, unless_updated_since):
            return copy_metadata(record.meta)
        if state in _FINAL_STATES:
            check_settled(record)  # (no await since: the check holds for the write)
        self._index.set_state(session_id, state)
        record.meta.updated_at = self._clock.stamp()
        self._checkpoints.changed(record)
        if state in _FINAL_STATES:
            await self._checkpoints.write(session_id, durable=True)
        if state == SessionState.CLOSED:
            self._feed.end(session_id, CLOSED)
        return copy_metadata(record.meta)

    async def touch(self, session_id: str, *, epoch: str | None = None) -> None:
        self._require_writable()
        record = self._record(session_id, epoch)
        self._check_not_expired(record)
        if record.meta.state == SessionState.CLOSED:  # a closed session has no activity
            return
        record.meta.touch(self._clock.stamp())
        self._checkpoints.changed(record)

    # -- events ---------------------------------------------------------------------

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        return await self.append_event(session_id, MessageEvent(message), key)

    async def append_events(
        self, session_id: str, items: Sequence[AppendItem], *, epoch: str | None = None
    ) -> list[Appended]:
        self._require_writable()
        record = self._appendable(session_id, epoch)
        if not items:
            return []
        window = None
        for _event, key in items:
            if key is not None:
                window = await self._appends.key_window(session_id)
                record = self._appendable(session_id, epoch)  # checked again: it may have gone
                break
        return await self._appends.append(record, items, window)

    def _files_of(self, session_id: str) -> Callable[[], str]:
        """What names a session's files, when asked (a time in them is said)."""
        return lambda: f"{self.layout.checkpoint(session_id)} (session {session_id!r}, or its log)"

    def _appendable(self, session_id: str, epoch: str | None = None) -> SessionRecord:
        """The session's record, if it takes appends now (to the log of ``epoch``, if
        given); with no await between this and the seqs' assignment."""
        record = self._record(session_id, epoch)
        meta = record.meta
        if meta.state == _CLOSED:
            raise SessionClosed(f"session {session_id!r} is closed")
        if meta.expires_at is not None or meta.state == _EXPIRED:  # (most: neither)
            self._check_not_expired(record)
        return record

    # -- helpers --------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self._read_only:
            raise StorageError(f"storage at {self.config.base_path} is open read-only")
        if not self._ready:
            raise StorageError(f"storage at {self.config.base_path} is not open")
