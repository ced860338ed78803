"""JsonlStorage: the storage contract (``persistence/base.py``) on JSONL event logs.

How it holds the contract's promises:

- ``seq`` is assigned synchronously, in call order, before any await; the group-commit
  :class:`~.writer.LogWriter` writes each session's lines in that order, and reports
  them written before their appends are acknowledged. The in-memory metadata moves only
  then, so it always describes what is in the log; when a write fails, the session's
  next seq goes back to its last written one.
- A message is a ``message`` event in the log: the history is the log's message events
  (after the preamble of a session converted from the old format), found through the
  message index. Checkpoints hold metadata and a log position only
  (``checkpointer.py``); they are written off the acknowledgement path, except for
  what no log line can bring back: creation, a move to closed or expired, imported
  metadata, which are on disk when they return.
- Idempotency keys: a session's window (its last ``KEY_WINDOW`` appends) is read from
  its log at its first keyed append, and kept in a cache bounded in bytes.
- Expired sessions (sliding TTL) refuse ``load_session``, histories and appends with
  :class:`SessionExpired`; their metadata and events stay readable until cleanup.

Read-only (``config.read_only``, ``open_storage(url, read_only=True)``): for offline
tools. It opens an existing store only (a directory without ``sessions/`` and
``events/`` is refused, naming it), creates and changes nothing, takes no lock, and
refuses every write with :class:`StorageError`. It does not wait for a server that holds
the store, nor stop one from starting: it reads the files as they are, without repair
(a torn tail is left out, WAL segments are not replayed), a best-effort view; it logs
which process holds the store, if any.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Self, TypeVar

from bamboo_session.protocol.codec import encode_stored_event
from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    Message,
    MessageEvent,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
    utcnow,
)

from ..base import (
    KEY_WINDOW,
    Appended,
    AppendItem,
    HistoryPage,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    StorageError,
    StorageFull,
)
from ..events import completed_event, page_bounds
from ..feed import CLOSED, DELETED, Feed, FeedSubscription
from ..index import SessionIndex, copy_metadata
from ..keys import KeyWindow, split_duplicates
from . import removal, snapshot
from .caches import KeyWindows, MessageCache
from .checkpointer import Checkpointer, to_completion
from .config import JsonlStorageConfig
from .files import LockFile
from .reads import HistoryReader, events_after, keys_after
from .record import SessionRecord
from .recovery import RecoveryReport, recover
from .wal import SegmentFile
from .writer import Batch, LogWriter

log = logging.getLogger(__name__)

T = TypeVar("T")

# Sessions whose idempotency-key window stays in memory at most (besides the bytes).
KEY_WINDOWS_KEPT: Final = 1024
# States with no log line to recover them from: on disk before the change returns.
_FINAL_STATES: Final = frozenset({SessionState.CLOSED, SessionState.EXPIRED})
_NO_KEYS: Final = KeyWindow()  # for appends without keys: never written to


class JsonlStorage:
    """Sessions, histories and event logs in plain files under one directory.

    Open with ``await JsonlStorage.open(config)`` (or ``async with``); only one storage
    may have a directory open for writing at a time (:class:`StorageLocked`)."""

    def __init__(self, config: JsonlStorageConfig) -> None:
        self.config = config
        self.layout = config.layout
        self._read_only = config.read_only
        self._lock_file = LockFile(self.layout.lock)
        self._index = SessionIndex(secondary=config.enable_index)
        self._records: dict[str, SessionRecord] = {}
        self._creating: set[str] = set()
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._feed = Feed()
        self._keys = KeyWindows(KEY_WINDOWS_KEPT, config.key_cache_bytes)
        self._keys_loading: dict[str, asyncio.Future[KeyWindow]] = {}
        self._messages = MessageCache(config.message_cache_bytes)
        self._history = HistoryReader(self.layout, self._messages, self._io, not config.read_only)
        self._checkpoints = Checkpointer(
            config, self._records, self._history, self._io, self._spawn
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        wal = SegmentFile(self.layout, config.wal_segment_bytes, config.wal_segment_age)
        self._writer = LogWriter(
            self.layout,
            config.durability,
            config.max_open_logs,
            config.fsync_interval,
            self._on_written,
            self._on_failed,
            wal if config.uses_wal else None,
        )
        self._ready = False
        self._closed = False
        self.recovery: RecoveryReport | None = None  # what open found and repaired

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(cls, config: JsonlStorageConfig) -> Self:
        """Lock the directory, repair what a crash left, build the index, start (or,
        read-only: read what is there)."""
        storage = cls(config)
        await storage._open()
        return storage

    async def _open(self) -> None:
        base = self.config.base_path
        if self._read_only:
            if not await asyncio.to_thread(self.layout.is_store):
                raise StorageError(
                    f"{base} is not a bamboo JSONL store (it has no sessions/ and events/ "
                    "directories); a read-only open does not create one"
                )
            holder = await asyncio.to_thread(self._lock_file.holder)
            if holder is not None:
                log.info("read-only: %s is in use by pid %d; reading it as it is", base, holder)
        else:
            await asyncio.to_thread(base.mkdir, parents=True, exist_ok=True)
            self._lock_file.acquire()
        try:
            with _gc_paused():
                report = await asyncio.to_thread(recover, self.config)
                self._load_records(report)
        except BaseException:
            self._lock_file.release()
            raise
        self.recovery = report
        if self._read_only:
            return
        self._writer.start()
        self._loops = [asyncio.create_task(self._checkpoints.run(), name="bamboo-checkpoints")]
        if self.config.cleanup_interval is not None:
            self._loops.append(asyncio.create_task(self._cleanup_loop(), name="bamboo-cleanup"))
        self._ready = True

    def _load_records(self, report: RecoveryReport) -> None:
        for found in report.sessions:
            record = SessionRecord(
                found.metadata,
                found.checkpoint_seq,
                found.checkpoint_offset,
                found.log_size,
                found.index,
                found.pending,
                found.preamble,
                found.stamp,
            )
            record.preamble_messages = found.preamble_messages
            self._records[found.metadata.id] = record
            self._index.add(found.metadata)
            if record.is_dirty() and not self._read_only:
                self._checkpoints.dirty.add(found.metadata.id)
        report.sessions = []  # the records hold them now

    async def close(self) -> None:
        """Write pending appends, checkpoint every dirty session, save the index
        snapshot, release the lock. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        self._feed.end_all()
        if self._read_only:
            await self._writer.close()
            return
        try:
            for task in self._loops:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            try:
                await self._writer.flush()
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                await self._checkpoints.write_dirty()
            finally:
                await self._writer.close()
            if not self._checkpoints.dirty:
                with _gc_paused():
                    entries = self._snapshot_entries()
                    await asyncio.to_thread(snapshot.write, self.layout, entries)
            else:
                count = len(self._checkpoints.dirty)
                log.error("%d sessions could not be checkpointed on close", count)
        finally:
            self._lock_file.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        """Open and accepting appends (never, when read-only)."""
        return self._ready

    @property
    def read_only(self) -> bool:
        return self._read_only

    def _snapshot_entries(self) -> list[snapshot.SnapshotEntry]:
        return [
            snapshot.SnapshotEntry(
                record.meta, record.log_size, record.index, record.preamble, record.stamp
            )
            for record in self._records.values()
            if record.stamp is not None
        ]

    # -- sessions -------------------------------------------------------------------

    async def create_session(self, session: Session) -> None:
        self._require_writable()
        session_id = check_session_id(session.metadata.id)
        while (deleting := self._deleting.get(session_id)) is not None:
            await asyncio.shield(deleting)
        if session_id in self._records or session_id in self._creating:
            raise SessionExists(f"session {session_id!r} already exists")
        limit = self.config.max_sessions
        if limit is not None and len(self._records) + len(self._creating) >= limit:
            raise StorageFull(f"the storage holds its maximum of {limit} sessions")
        meta = self._new_metadata(session.metadata)
        self._creating.add(session_id)
        await to_completion(self._create(meta))
        if session.messages:
            await self.append_events(
                session_id, [(MessageEvent(message), None) for message in session.messages]
            )

    async def _create(self, meta: SessionMetadata) -> None:
        try:
            slots, stamp = await self._checkpoints.create(meta)
        finally:
            self._creating.discard(meta.id)
        record = SessionRecord(meta, 0, 0, 0, stamp=stamp, slots=slots)
        record.index_checked = True  # no index file yet: nothing to check
        self._records[meta.id] = record
        self._index.add(meta)
        self._messages.start(meta.id, 0)

    def _new_metadata(self, given: SessionMetadata) -> SessionMetadata:
        meta = copy_metadata(given)
        meta.last_seq = 0  # a new log; whatever the caller set does not describe it
        meta.message_count = 0
        if meta.ttl is None and self.config.default_ttl is not None:
            meta.ttl = self.config.default_ttl
            meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
        return meta

    async def load_session(self, session_id: str) -> Session | None:
        record = self._records.get(check_session_id(session_id))
        if record is None:
            return None
        self._check_not_expired(record)
        try:
            messages = await self._read_history(record, 0, record.meta.message_count)
        except SessionNotFound:
            return None
        return Session(metadata=copy_metadata(record.meta), messages=messages)

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        record = self._records.get(check_session_id(session_id))
        return None if record is None else copy_metadata(record.meta)

    async def delete_session(self, session_id: str) -> None:
        self._require_writable()
        self._record(session_id)
        await self._remove(session_id)

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        result = self._index.query(filter)
        result.sessions = [copy_metadata(meta) for meta in result.sessions]
        return result

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]:
        return [copy_metadata(meta) for meta in self._index.of_user(user_id)]

    async def get_session_history(self, session_id: str) -> list[Message]:
        record = self._record(session_id)
        self._check_not_expired(record)
        return await self._read_history(record, 0, record.meta.message_count)

    async def get_history_page(
        self, session_id: str, limit: int, before: int | None = None
    ) -> HistoryPage:
        record = self._record(session_id)
        self._check_not_expired(record)
        start, end = page_bounds(record.meta.message_count, limit, before)
        return HistoryPage(await self._read_history(record, start, end), start, start > 0)

    async def _read_history(self, record: SessionRecord, start: int, end: int) -> list[Message]:
        try:
            return await self._history.read(record, start, end)
        except StorageError:
            self._record(record.session_id)  # deleted while reading: SessionNotFound
            raise

    async def update_session_state(self, session_id: str, state: SessionState) -> SessionMetadata:
        """Closed and expired are on disk when this returns; moves among the live states
        go to disk with the session's next checkpoint (a crash ends connections anyway)."""
        self._require_writable()
        record = self._record(session_id)
        record.meta.state.check_transition(state)
        if state != SessionState.EXPIRED:
            self._check_not_expired(record)  # a state change does not revive a session
        self._index.set_state(session_id, state)
        record.meta.updated_at = utcnow()
        self._checkpoints.changed(record)
        if state in _FINAL_STATES:
            await self._checkpoints.write(session_id, durable=True)
        if state == SessionState.CLOSED:
            self._feed.end(session_id, CLOSED)
        return copy_metadata(record.meta)

    async def touch(self, session_id: str) -> None:
        self._require_writable()
        record = self._record(session_id)
        self._check_not_expired(record)
        record.meta.touch()
        self._checkpoints.changed(record)

    async def cleanup_expired_sessions(self) -> int:
        self._require_writable()
        now = utcnow()
        expired = [meta.id for meta in self._index if meta.is_expired(now)]
        removed = 0
        for session_id in expired:
            record = self._records.get(session_id)
            if record is not None and record.meta.is_expired(now):
                await self._remove(session_id)
                removed += 1
        if removed:
            log.info("removed %d expired sessions", removed)
        return removed

    async def _cleanup_loop(self) -> None:
        assert self.config.cleanup_interval is not None
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self.cleanup_expired_sessions()
            except Exception:
                log.exception("cleanup of expired sessions failed")

    # -- events ---------------------------------------------------------------------

    async def append_event(
        self, session_id: str, event: AnyAgentEvent, key: str | None = None
    ) -> Appended:
        return (await self.append_events(session_id, [(event, key)]))[0]

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        return await self.append_event(session_id, MessageEvent(message), key)

    async def append_events(self, session_id: str, items: Sequence[AppendItem]) -> list[Appended]:
        self._require_writable()
        record = self._appendable(session_id)
        if not items:
            return []
        window = _NO_KEYS
        if any(key is not None for _event, key in items):
            window = await self._key_window(session_id)
            record = self._appendable(session_id)
        # From here to submit nothing awaits: seqs follow call order, with no gaps.
        fresh, results = split_duplicates(items, record.next_seq, window)
        if fresh:
            now = utcnow()
            stored = [
                StoredEvent(seq, now, completed_event(event), key) for seq, event, key in fresh
            ]
            for event in stored:
                if event.key is not None:
                    self._keys.add(session_id, window, event.key, event.seq)
            future = self._writer.submit(session_id, _batch(stored))
            record.next_seq = stored[-1].seq
            await asyncio.shield(future)
        await self._await_originals(session_id, results)
        return results

    def _appendable(self, session_id: str) -> SessionRecord:
        record = self._record(session_id)
        if record.meta.state == SessionState.CLOSED:
            raise SessionClosed(f"session {session_id!r} is closed")
        self._check_not_expired(record)
        return record

    async def _await_originals(self, session_id: str, results: list[Appended]) -> None:
        """A duplicate of an append still being written is acknowledged only once that
        one is: if it fails, so does this call (the caller retries with the same key)."""
        newest = max((r.seq for r in results if r.duplicate), default=0)
        record = self._records.get(session_id)
        if record is None or newest <= record.meta.last_seq:
            return
        await self._writer.flush()
        record = self._records.get(session_id)
        if record is None or newest > record.meta.last_seq:
            raise StorageError(
                f"the first append with this key to session {session_id!r} failed; retry"
            )

    async def _key_window(self, session_id: str) -> KeyWindow:
        """The session's key window: cached, or read from its log (seqs and keys only)
        once, however many appends wait for it."""
        window = self._keys.get(session_id)
        if window is not None:
            return window
        loading = self._keys_loading.get(session_id)
        if loading is None:
            loading = asyncio.ensure_future(self._read_key_window(session_id))
            self._keys_loading[session_id] = loading
            loading.add_done_callback(lambda _: self._keys_loading.pop(session_id, None))
        return await asyncio.shield(loading)

    async def _read_key_window(self, session_id: str) -> KeyWindow:
        record = self._record(session_id)
        last = record.meta.last_seq
        start = max(0, last - KEY_WINDOW)
        low, high = record.bracket(start)
        path = self.layout.log_file(session_id)
        pairs = await self._io(keys_after, path, start, low, high, record.log_size)
        window = KeyWindow()
        for seq, key in pairs:
            window.add(key, seq)
        if self._records.get(session_id) is record:
            window.forget_before(record.meta.last_seq)
            self._keys.put(session_id, window, self._busy)
        return window

    def _busy(self, session_id: str) -> bool:
        """Whether appends to the session are in flight (its key window holds them)."""
        record = self._records.get(session_id)
        return record is not None and record.next_seq != record.meta.last_seq

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredEvent]:
        record = self._record(session_id)
        last = record.meta.last_seq  # only written events: nothing in flight is visible
        after_seq = max(after_seq, 0)
        if after_seq >= last or (limit is not None and limit <= 0):
            return []
        low, high = record.bracket(after_seq)
        path = self.layout.log_file(session_id)
        try:
            events: list[StoredEvent] = await self._io(
                events_after, path, after_seq, low, high, record.log_size, limit, max_bytes
            )
        except StorageError:
            self._record(session_id)  # deleted while reading: SessionNotFound
            raise
        return events

    async def subscribe(self, session_id: str, after_seq: int) -> FeedSubscription:
        record = self._record(session_id)

        async def read(after: int, limit: int) -> list[StoredEvent]:
            return await self.read_events(session_id, after, limit)

        subscription = self._feed.subscribe(session_id, after_seq, record.meta.last_seq, read)
        if record.meta.state == SessionState.CLOSED:
            subscription.end(CLOSED)
        return subscription

    async def last_seq(self, session_id: str) -> int:
        return self._record(session_id).meta.last_seq

    async def epoch(self, session_id: str) -> str:
        return self._record(session_id).meta.epoch

    # -- import (SessionImport) -----------------------------------------------------

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        """Appends ``events`` with their own seq, ts and key, through the writer (as
        durable as appends); the first must follow the session's last seq."""
        self._require_writable()
        record = self._record(session_id)
        if not events:
            return
        if any(event.key is not None for event in events):
            window = await self._key_window(session_id)
        else:
            window = _NO_KEYS
        record = self._record(session_id)
        expected = record.next_seq + 1
        for event in events:
            if event.seq != expected:
                raise ValueError(f"import of {session_id!r}: seq {event.seq}, not {expected}")
            expected += 1
        stored = list(events)
        for event in stored:
            if event.key is not None:
                self._keys.add(session_id, window, event.key, event.seq)
        future = self._writer.submit(session_id, _batch(stored, imported=True))
        record.next_seq = stored[-1].seq
        await asyncio.shield(future)

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        """Sets the session's state, times, ttl and extra as given, durably."""
        self._require_writable()
        record = self._record(metadata.id)
        meta = record.meta
        self._index.set_state(meta.id, metadata.state)
        meta.updated_at = metadata.updated_at
        meta.last_activity_at = metadata.last_activity_at
        meta.expires_at = metadata.expires_at
        meta.ttl = metadata.ttl
        meta.extra = dict(metadata.extra)
        self._checkpoints.changed(record)
        await self._checkpoints.write(meta.id, durable=True)
        if metadata.state == SessionState.CLOSED:
            self._feed.end(meta.id, CLOSED)

    # -- damaged files --------------------------------------------------------------

    async def damaged_files(self) -> list[Path]:
        """Files kept aside because they held damage (not an ordinary crash's torn or
        unacknowledged tail): for an operator to inspect, then clear."""
        return await asyncio.to_thread(self.layout.damaged_files)

    async def clear_damaged(self) -> list[Path]:
        """Removes the files :meth:`damaged_files` lists; returns them."""
        self._require_writable()
        return await self._io(removal.remove_damaged, self.layout)

    # -- the writer's reports -------------------------------------------------------

    def _on_written(self, session_id: str, written: list[tuple[int, Batch]], size: int) -> None:
        record = self._records.get(session_id)
        if record is None:  # deleted while its appends were queued
            return
        meta = record.meta
        first_message = meta.message_count
        messages: list[tuple[Message, int]] = []
        events: list[StoredEvent] = []
        for offset, batch in written:
            first_seq = batch.events[0].seq
            for seq, at, length in batch.messages:
                record.add_message(seq, offset + at, length)
                event = batch.events[seq - first_seq].event
                assert isinstance(event, MessageEvent)
                messages.append((event.message, length + 1))
            events.extend(batch.events)
        meta.message_count += len(messages)
        last = events[-1]
        record.written(last.seq, size)
        self._keys.forget_before(session_id, last.seq)
        if not written[-1][1].imported:
            meta.touch(max(last.ts, meta.last_activity_at))
        if messages:
            self._messages.extend(session_id, first_message, messages)
        self._checkpoints.appended(record)
        self._feed.publish(session_id, events)

    def _on_failed(self, session_id: str, error: OSError) -> None:
        record = self._records.get(session_id)
        log.error("appending to the log of session %r failed: %s", session_id, error)
        if record is not None:
            # Seqs handed out after the last written one were never stored: reuse them.
            record.next_seq = record.meta.last_seq
            self._keys.discard_from(session_id, record.next_seq + 1)

    # -- delete ---------------------------------------------------------------------

    async def _remove(self, session_id: str) -> None:
        """Forget the session, then delete its files once its queued appends and any
        checkpoint in progress are done (so neither can recreate a file)."""
        record = self._records.pop(session_id)
        self._feed.end(session_id, DELETED)
        self._keys.drop(session_id)
        self._index.remove(session_id)
        self._messages.drop(session_id)
        self._checkpoints.forget(session_id)
        done = asyncio.get_running_loop().create_future()
        self._deleting[session_id] = done
        try:
            await to_completion(self._delete_after_writes(session_id, record))
        except BaseException:
            # Not deleted (the WAL could not record it, or the files stay): the session
            # is still there on disk, so it stays in the index too.
            if session_id not in self._records and self.layout.checkpoint(session_id).exists():
                self._records[session_id] = record
                self._index.add(record.meta)
                self._checkpoints.changed(record)
            raise
        finally:
            del self._deleting[session_id]
            done.set_result(None)

    async def _delete_after_writes(self, session_id: str, record: SessionRecord) -> None:
        await self._writer.forget(session_id, record.meta.epoch)
        async with record.checkpoint_lock():
            await self._io(removal.delete_session_files, self.layout, session_id)

    # -- helpers --------------------------------------------------------------------

    def _require_writable(self) -> None:
        if self._read_only:
            raise StorageError(f"storage at {self.config.base_path} is open read-only")
        if not self._ready:
            raise StorageError(f"storage at {self.config.base_path} is not open")

    def _record(self, session_id: str) -> SessionRecord:
        record = self._records.get(check_session_id(session_id))
        if record is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        return record

    def _check_not_expired(self, record: SessionRecord) -> None:
        if record.meta.is_expired():
            raise SessionExpired(f"session {record.meta.id!r} has expired")

    async def _io(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking file work in a thread; an OSError becomes a StorageError."""
        try:
            return await asyncio.to_thread(function, *args)
        except OSError as exc:
            raise StorageError(f"storage I/O failed: {exc}") from exc

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("storage background task failed: %r", exc, exc_info=exc)


def _batch(stored: list[StoredEvent], imported: bool = False) -> Batch:
    """The events as log lines, with where each message's line is among them."""
    lines = [encode_stored_event(event) + b"\n" for event in stored]
    messages = []
    offset = 0
    for event, line in zip(stored, lines, strict=True):
        if isinstance(event.event, MessageEvent):
            messages.append((event.seq, offset, len(line) - 1))
        offset += len(line)
    return Batch(stored, b"".join(lines), messages, imported)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
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
