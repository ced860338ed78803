"""The embedded storage backend: JSONL event logs, JSON checkpoints, an in-memory index.

Layout under ``base_path``::

    sessions/<id>.json    checkpoint: metadata + messages, and how far into the log it
                          reaches (written atomically: temp file, fsync, rename, fsync dir)
    events/<id>.jsonl     the event log, one StoredEvent per line: the write-ahead log
                          of the session (checkpoints are rebuilt from it)
    wal/<n>.wal           ``fsync`` mode: the shared WAL segments, synced once per group
                          commit; deleted once the logs they cover are synced
    index/                the index snapshot written on a clean close (fast start)
    LOCK                  flock'ed while a storage has the directory open

How it holds its promises:

- In ``fsync`` mode an append is acknowledged once its lines are in a synced WAL
  segment (``persistence/wal.py``); the session log holds them too, synced later. Open
  replays what remains of the WAL into the logs before anything else reads them.
- ``seq`` is assigned synchronously, in call order, before any await; the group-commit
  :class:`~.writer.LogWriter` writes each session's lines in that order. The in-memory
  metadata (``last_seq``, ``message_count``, activity, cached messages) moves only when
  the writer reports lines written, so it always describes what is in the log. When a
  write fails, the session's next seq goes back to its last written one.
- A message is an event in the log first. Its checkpoint is rewritten later: every
  ``checkpoint_every`` appends, every ``checkpoint_interval`` seconds while dirty, on
  ``checkpoint()`` and on close. Loading a history reads the checkpoint plus the log
  lines after it, so nothing acknowledged is ever missing.
- ``create_session``, ``update_session_state`` and ``delete_session`` are durable when
  they return (except in ``memory`` mode, and for a state change asked with
  ``durable=False``, which goes to disk with the next checkpoint).
- Expired sessions (sliding TTL) refuse ``load_session``, ``get_session_history`` and
  appends with :class:`SessionExpired`; their metadata and events stay readable until
  cleanup removes them.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import msgspec

from bamboo_session.protocol.codec import decode_stored_event, encode_stored_event
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

from .base import (
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
from .config import DURABILITY_MODES, Durability, JsonlStorageConfig
from .events import completed_event, page_bounds
from .feed import CLOSED, DELETED, Feed, FeedSubscription
from .files import LockFile, fsync_dir, iter_lines, read_file, write_atomic
from .index import SessionIndex, copy_metadata
from .keys import KeyWindow, split_duplicates
from .recovery import (
    CHECKPOINT_SUFFIX,
    TOMBSTONE_SUFFIX,
    Checkpoint,
    FileStamp,
    RecoveryReport,
    SnapshotEntry,
    decode_checkpoint,
    encode_checkpoint,
    recover,
    stamp_of,
    write_snapshot,
)
from .url import StoreOptions, StoreURL
from .wal import SegmentFile
from .writer import LOG_SUFFIX, LogWriter

__all__ = ["JsonlStorage", "JsonlStorageConfig"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# A read of events after seq N seeks to the last known (seq, offset) at or before N;
# one such mark is kept per this many bytes of log written.
MARK_EVERY_BYTES: Final = 256 * 1024
# Dirty sessions checkpointed at once by the periodic task and on close.
CHECKPOINT_CONCURRENCY: Final = 16
# Sessions whose idempotency-key window stays in memory; others read theirs again from
# their log (seqs and keys only) at their next keyed append.
KEY_WINDOWS_KEPT: Final = 1024
# States with no log line to recover them from: on disk before the change returns.
_FINAL_STATES: Final = frozenset({SessionState.CLOSED, SessionState.EXPIRED})


class _Record:
    """What the storage holds for one session besides its index entry."""

    __slots__ = (
        "checkpoint_offset",
        "checkpoint_pending",
        "checkpoint_seq",
        "checkpoint_stamp",
        "keys",
        "lock",
        "log_size",
        "marks",
        "meta",
        "meta_dirty",
        "next_seq",
    )

    def __init__(
        self,
        meta: SessionMetadata,
        checkpoint_seq: int,
        checkpoint_offset: int,
        checkpoint_stamp: FileStamp | None,
        log_size: int,
    ) -> None:
        self.meta = meta
        self.next_seq = meta.last_seq  # the last seq handed out; > meta.last_seq in flight
        self.log_size = log_size  # bytes of log holding events 1..meta.last_seq
        self.checkpoint_seq = checkpoint_seq
        self.checkpoint_offset = checkpoint_offset
        self.checkpoint_stamp = checkpoint_stamp
        self.meta_dirty = False  # metadata changed without a log append (state)
        self.checkpoint_pending = False
        self.lock: asyncio.Lock | None = None  # serialises checkpoint writes and delete
        self.keys: KeyWindow | None = None  # loaded at the first keyed append
        self.marks: list[tuple[int, int]] = [(0, 0)]
        if checkpoint_seq:
            self.marks.append((checkpoint_seq, checkpoint_offset))

    def is_dirty(self) -> bool:
        return self.meta_dirty or self.meta.last_seq > self.checkpoint_seq

    def checkpoint_lock(self) -> asyncio.Lock:
        if self.lock is None:
            self.lock = asyncio.Lock()
        return self.lock


class JsonlStorage:
    """Sessions, histories and event logs in plain files under one directory.

    Open with ``await JsonlStorage.open(config)`` (or ``async with``); only one storage
    may have a directory open at a time (:class:`StorageLocked`)."""

    def __init__(self, config: JsonlStorageConfig) -> None:
        self.config = config
        self._lock_file = LockFile(config.lock_path)
        self._index = SessionIndex(secondary=config.enable_index)
        self._records: dict[str, _Record] = {}
        self._messages_cache: OrderedDict[str, list[Message]] = OrderedDict()
        self._loading: dict[str, asyncio.Future[list[Message]]] = {}
        self._creating: set[str] = set()
        self._deleting: dict[str, asyncio.Future[None]] = {}
        self._dirty: set[str] = set()
        self._feed = Feed()
        self._key_windows: OrderedDict[str, _Record] = OrderedDict()
        self._keys_loading: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._writer = LogWriter(
            config.events_dir,
            config.durability,
            config.max_open_logs,
            config.fsync_interval,
            self._on_written,
            self._on_failed,
            SegmentFile(config.wal_dir, config.wal_segment_bytes, config.wal_segment_age)
            if config.uses_wal
            else None,
        )
        self._ready = False
        self._closed = False
        self.recovery: RecoveryReport | None = None  # what open found and repaired

    # -- lifecycle ------------------------------------------------------------------

    @classmethod
    async def open(cls, config: JsonlStorageConfig) -> Self:
        """Lock the directory, repair what a crash left, build the index, start."""
        storage = cls(config)
        await storage._open()
        return storage

    async def _open(self) -> None:
        await asyncio.to_thread(self.config.base_path.mkdir, parents=True, exist_ok=True)
        self._lock_file.acquire()
        try:
            with _gc_paused():
                report = await asyncio.to_thread(recover, self.config)
                self._load_records(report)
        except BaseException:
            self._lock_file.release()
            raise
        self.recovery = report
        self._writer.start()
        self._loops = [
            asyncio.create_task(self._checkpoint_loop(), name="bamboo-storage-checkpoint")
        ]
        if self.config.cleanup_interval is not None:
            self._loops.append(
                asyncio.create_task(self._cleanup_loop(), name="bamboo-storage-cleanup")
            )
        self._ready = True

    def _load_records(self, report: RecoveryReport) -> None:
        for found in report.sessions:
            record = _Record(
                found.metadata,
                found.checkpoint_seq,
                found.checkpoint_offset,
                found.checkpoint_stamp,
                found.log_size,
            )
            self._records[found.metadata.id] = record
            self._index.add(found.metadata)
        report.sessions = []  # the records hold them now

    async def close(self) -> None:
        """Write pending appends, checkpoint every dirty session, save the index
        snapshot, release the lock. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        self._feed.end_all()
        try:
            for task in self._loops:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            try:
                await self._writer.flush()
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                await self._checkpoint_dirty()
            finally:
                await self._writer.close()
            if not self._dirty:
                with _gc_paused():
                    entries = self._snapshot_entries()
                    await asyncio.to_thread(write_snapshot, self.config, entries)
            else:
                log.error("%d sessions could not be checkpointed on close", len(self._dirty))
        finally:
            self._lock_file.release()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        return self._ready

    # -- sessions -------------------------------------------------------------------

    async def create_session(self, session: Session) -> None:
        self._require_open()
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
        await _to_completion(self._create(meta))
        if session.messages:
            await self.append_events(
                session_id, [(MessageEvent(message), None) for message in session.messages]
            )

    async def _create(self, meta: SessionMetadata) -> None:
        try:
            stamp = await self._io(self._write_new_session, meta)
        finally:
            self._creating.discard(meta.id)
        self._records[meta.id] = _Record(meta, 0, 0, stamp, 0)
        self._index.add(meta)
        self._cache_messages(meta.id, [])

    def _new_metadata(self, given: SessionMetadata) -> SessionMetadata:
        meta = copy_metadata(given)
        meta.last_seq = 0  # a new log; whatever the caller set does not describe it
        meta.message_count = 0
        if meta.ttl is None and self.config.default_ttl is not None:
            meta.ttl = self.config.default_ttl
            meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
        return meta

    def _write_new_session(self, meta: SessionMetadata) -> FileStamp:
        # Checkpoint first: a crash before the log exists leaves a valid empty session.
        data = encode_checkpoint(Checkpoint(meta, [], 0, 0))
        stat = write_atomic(self._checkpoint_path(meta.id), data, durable=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        os.close(os.open(self._log_path(meta.id), flags, 0o644))
        fsync_dir(self.config.events_dir)
        return stamp_of(stat)

    async def load_session(self, session_id: str) -> Session | None:
        check_session_id(session_id)
        record = self._records.get(session_id)
        if record is None:
            return None
        self._check_not_expired(record)
        try:
            messages = await self._messages(session_id)
        except SessionNotFound:
            return None
        record = self._records.get(session_id)
        if record is None:
            return None
        return Session(metadata=copy_metadata(record.meta), messages=list(messages))

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        check_session_id(session_id)
        record = self._records.get(session_id)
        return None if record is None else copy_metadata(record.meta)

    async def delete_session(self, session_id: str) -> None:
        self._require_open()
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
        return list(await self._messages(session_id))

    async def get_history_page(
        self, session_id: str, limit: int, before: int | None = None
    ) -> HistoryPage:
        record = self._record(session_id)
        self._check_not_expired(record)
        messages = await self._messages(session_id)
        start, end = page_bounds(len(messages), limit, before)
        return HistoryPage(messages[start:end], start, start > 0)

    async def update_session_state(self, session_id: str, state: SessionState) -> SessionMetadata:
        """Closed and expired are on disk when this returns; moves among the live states
        go to disk with the session's next checkpoint (a crash ends connections anyway)."""
        self._require_open()
        record = self._record(session_id)
        record.meta.state.check_transition(state)
        if state != SessionState.EXPIRED:
            self._check_not_expired(record)  # a state change does not revive a session
        self._index.set_state(session_id, state)
        record.meta.updated_at = utcnow()
        self._mark_dirty(session_id, record)
        if state in _FINAL_STATES:
            # A state change has no log line to recover it from: the checkpoint is it.
            await self._checkpoint(session_id)
        if state == SessionState.CLOSED:
            self._feed.end(session_id, CLOSED)
        return copy_metadata(record.meta)

    async def touch(self, session_id: str) -> None:
        self._require_open()
        record = self._record(session_id)
        self._check_not_expired(record)
        record.meta.touch()
        self._mark_dirty(session_id, record)

    def _mark_dirty(self, session_id: str, record: _Record) -> None:
        record.meta_dirty = True
        self._dirty.add(session_id)

    async def cleanup_expired_sessions(self) -> int:
        self._require_open()
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
        self._require_open()
        record = self._appendable(session_id)
        if not items:
            return []
        if record.keys is None and any(key is not None for _event, key in items):
            await self._load_keys(session_id, record)
            record = self._appendable(session_id)
        # From here to submit nothing awaits: seqs follow call order, with no gaps.
        window = record.keys if record.keys is not None else KeyWindow()
        fresh, results = split_duplicates(items, record.next_seq, window)
        if fresh:
            now = utcnow()
            stored = [
                StoredEvent(seq, now, completed_event(event), key) for seq, event, key in fresh
            ]
            for event in stored:
                if event.key is not None:
                    window.add(event.key, event.seq)
            data = b"".join([encode_stored_event(event) + b"\n" for event in stored])
            future = self._writer.submit(session_id, data, stored)
            record.next_seq = stored[-1].seq
            await asyncio.shield(future)
        await self._await_originals(session_id, results)
        return results

    def _appendable(self, session_id: str) -> _Record:
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

    async def _load_keys(self, session_id: str, record: _Record) -> None:
        """The session's key window, read from its log (seqs and keys only), once; a
        window of a session written by nobody for a while is dropped again (LRU)."""
        loading = self._keys_loading.get(session_id)
        if loading is None:
            loading = asyncio.ensure_future(self._read_keys(session_id, record))
            self._keys_loading[session_id] = loading
            loading.add_done_callback(lambda _: self._keys_loading.pop(session_id, None))
        await asyncio.shield(loading)

    async def _read_keys(self, session_id: str, record: _Record) -> None:
        last = record.meta.last_seq
        start = max(0, last - KEY_WINDOW)
        mark = bisect.bisect_right(record.marks, (start, float("inf"))) - 1
        mark_seq, offset = record.marks[max(mark, 0)]
        pairs = await self._io(_read_keys, self._log_path(session_id), offset, mark_seq, last)
        if self._records.get(session_id) is not record or record.keys is not None:
            return
        window = KeyWindow()
        for seq, key in pairs:
            if seq > start:
                window.add(key, seq)
        record.keys = window
        self._key_windows[session_id] = record
        while len(self._key_windows) > KEY_WINDOWS_KEPT:
            old_id, old = next(iter(self._key_windows.items()))
            if old.next_seq != old.meta.last_seq:
                break  # appends in flight: its window holds their keys
            del self._key_windows[old_id]
            old.keys = None

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StoredEvent]:
        record = self._record(session_id)
        last = record.meta.last_seq  # only written events: nothing in flight is visible
        if after_seq >= last or (limit is not None and limit <= 0):
            return []
        mark = bisect.bisect_right(record.marks, (after_seq, float("inf"))) - 1
        start_seq, offset = record.marks[max(mark, 0)]
        try:
            return await self._io(
                _read_log_range,
                self._log_path(session_id),
                offset,
                start_seq,
                after_seq,
                last,
                limit,
                max_bytes,
            )
        except StorageError:
            self._record(session_id)  # deleted while reading: SessionNotFound
            raise

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

    # -- the writer's reports -------------------------------------------------------

    def _on_written(self, session_id: str, events: list[StoredEvent], new_size: int) -> None:
        record = self._records.get(session_id)
        if record is None:  # deleted while its appends were queued
            return
        meta = record.meta
        cached = self._messages_cache.get(session_id)
        for event in events:
            if isinstance(event.event, MessageEvent):
                meta.message_count += 1
                if cached is not None:
                    cached.append(event.event.message)
        meta.last_seq = events[-1].seq
        if record.keys is not None:
            record.keys.forget_before(meta.last_seq)
        record.log_size = new_size
        meta.touch(max(events[-1].ts, meta.last_activity_at))
        if new_size - record.marks[-1][1] >= MARK_EVERY_BYTES:
            record.marks.append((meta.last_seq, new_size))
        self._dirty.add(session_id)
        if self._behind(record) and not record.checkpoint_pending:
            record.checkpoint_pending = True
            self._spawn(self._scheduled_checkpoint(session_id, record))
        self._feed.publish(session_id, events)

    def _on_failed(self, session_id: str, error: OSError) -> None:
        record = self._records.get(session_id)
        log.error("appending to the log of session %r failed: %s", session_id, error)
        if record is not None:
            # Seqs handed out after the last written one were never stored: reuse them.
            record.next_seq = record.meta.last_seq
            if record.keys is not None:
                record.keys.discard_from(record.next_seq + 1)

    # -- messages -------------------------------------------------------------------

    async def _messages(self, session_id: str) -> list[Message]:
        """The session's full history: the cached list (kept current by
        ``_on_written``), or loaded from checkpoint + log into the cache."""
        cached = self._messages_cache.get(session_id)
        if cached is not None:
            self._messages_cache.move_to_end(session_id)
            return cached
        loading = self._loading.get(session_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        self._loading[session_id] = future
        try:
            messages = await self._load_messages(session_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it re-raised
            raise
        finally:
            del self._loading[session_id]
        future.set_result(messages)
        return messages

    async def _load_messages(self, session_id: str) -> list[Message]:
        try:
            data = await self._io(read_file, self._checkpoint_path(session_id))
        except StorageError:
            self._record(session_id)  # SessionNotFound when deleted meanwhile
            raise
        if data is None:
            self._record(session_id)
            raise StorageError(f"the checkpoint of session {session_id!r} is missing")
        checkpoint = decode_checkpoint(data)
        messages = list(checkpoint.messages)
        seq, offset = checkpoint.last_seq, checkpoint.log_offset
        # Catch up with the log until no write lands in between; then, with no await
        # before the cache is set, _on_written keeps the list current.
        while seq < (target := self._record(session_id).meta.last_seq):
            tail, seq, offset = await self._io(
                _read_messages, self._log_path(session_id), offset, seq, target
            )
            messages.extend(tail)
        self._cache_messages(session_id, messages)
        return messages

    def _cache_messages(self, session_id: str, messages: list[Message]) -> None:
        cache = self._messages_cache
        cache[session_id] = messages
        cache.move_to_end(session_id)
        while len(cache) > self.config.message_cache_size:
            cache.popitem(last=False)

    # -- checkpoints ----------------------------------------------------------------

    async def _checkpoint(self, session_id: str) -> None:
        """Rewrite the session's checkpoint if it is behind the log or its metadata."""
        record = self._records.get(session_id)
        if record is not None:
            # A cancelled caller must not cut a checkpoint write short: the lock would
            # be free while the write still runs in its thread.
            await _to_completion(self._checkpoint_record(session_id, record))

    async def _checkpoint_record(self, session_id: str, record: _Record) -> None:
        async with record.checkpoint_lock():
            if self._records.get(session_id) is not record or not record.is_dirty():
                return
            try:
                messages = await self._messages(session_id)
            except SessionNotFound:
                return
            if self._records.get(session_id) is not record:
                return
            # Taken together with no await in between: metadata, messages and log size
            # describe the same point of the log.
            meta = copy_metadata(record.meta)
            snapshot = Checkpoint(meta, list(messages), meta.last_seq, record.log_size)
            record.meta_dirty = False
            try:
                stamp = await self._io(self._write_checkpoint, snapshot)
            except BaseException:
                record.meta_dirty = True
                raise
            record.checkpoint_seq = snapshot.last_seq
            record.checkpoint_offset = snapshot.log_offset
            record.checkpoint_stamp = stamp
            if not record.is_dirty():
                self._dirty.discard(session_id)

    def _write_checkpoint(self, checkpoint: Checkpoint) -> FileStamp:
        path = self._checkpoint_path(checkpoint.metadata.id)
        return stamp_of(write_atomic(path, encode_checkpoint(checkpoint), durable=True))

    async def _scheduled_checkpoint(self, session_id: str, record: _Record) -> None:
        # Appends go on while a checkpoint is written; if they left it far behind
        # again, write the next one straight away.
        try:
            while self._records.get(session_id) is record and self._behind(record):
                await self._checkpoint(session_id)
        finally:
            record.checkpoint_pending = False

    def _behind(self, record: _Record) -> bool:
        return record.meta.last_seq - record.checkpoint_seq >= self.config.checkpoint_every

    async def _checkpoint_dirty(self) -> None:
        """Checkpoint every dirty session, a few at a time; failures are logged."""
        semaphore = asyncio.Semaphore(CHECKPOINT_CONCURRENCY)

        async def one(session_id: str) -> None:
            async with semaphore:
                try:
                    await self._checkpoint(session_id)
                except Exception:
                    log.exception("checkpoint of session %r failed", session_id)

        await asyncio.gather(*(one(session_id) for session_id in list(self._dirty)))

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.checkpoint_interval)
            await self._checkpoint_dirty()

    async def _cleanup_loop(self) -> None:
        assert self.config.cleanup_interval is not None
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self.cleanup_expired_sessions()
            except Exception:
                log.exception("cleanup of expired sessions failed")

    def _snapshot_entries(self) -> list[SnapshotEntry]:
        entries = []
        for record in self._records.values():
            if record.checkpoint_stamp is not None:
                entries.append(
                    SnapshotEntry(
                        record.meta,
                        record.checkpoint_seq,
                        record.checkpoint_offset,
                        record.checkpoint_stamp,
                        record.log_size,
                    )
                )
        return entries

    # -- delete ---------------------------------------------------------------------

    async def _remove(self, session_id: str) -> None:
        """Forget the session, then delete its files once its queued appends and any
        checkpoint in progress are done (so neither can recreate a file)."""
        record = self._records.pop(session_id)
        self._feed.end(session_id, DELETED)
        self._key_windows.pop(session_id, None)
        self._index.remove(session_id)
        self._messages_cache.pop(session_id, None)
        self._dirty.discard(session_id)
        done = asyncio.get_running_loop().create_future()
        self._deleting[session_id] = done
        try:
            await _to_completion(self._delete_after_writes(session_id, record))
        except BaseException:
            # Not deleted (the WAL could not record it, or the files stay): the session
            # is still there on disk, so it stays in the index too.
            if (
                session_id not in self._records
                and (self.config.sessions_dir / (session_id + CHECKPOINT_SUFFIX)).exists()
            ):
                self._records[session_id] = record
                self._index.add(record.meta)
                self._dirty.add(session_id)
            raise
        finally:
            del self._deleting[session_id]
            done.set_result(None)

    async def _delete_after_writes(self, session_id: str, record: _Record) -> None:
        await self._writer.forget(session_id, record.meta.epoch)
        async with record.checkpoint_lock():
            await self._io(self._delete_files, session_id)

    def _delete_files(self, session_id: str) -> None:
        # The checkpoint becomes a tombstone in one atomic rename, so a crash midway
        # leaves a delete that open finishes, never a half-deleted session.
        checkpoint = self._checkpoint_path(session_id)
        tombstone = self.config.sessions_dir / (session_id + TOMBSTONE_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.replace(checkpoint, tombstone)
        fsync_dir(self.config.sessions_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._log_path(session_id))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tombstone)

    # -- helpers --------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._ready:
            raise StorageError(f"storage at {self.config.base_path} is not open")

    def _record(self, session_id: str) -> _Record:
        check_session_id(session_id)
        record = self._records.get(session_id)
        if record is None:
            raise SessionNotFound(f"session {session_id!r} not found")
        return record

    def _check_not_expired(self, record: _Record) -> None:
        if record.meta.is_expired():
            raise SessionExpired(f"session {record.meta.id!r} has expired")

    def _checkpoint_path(self, session_id: str) -> Path:
        return self.config.sessions_dir / (session_id + CHECKPOINT_SUFFIX)

    def _log_path(self, session_id: str) -> Path:
        return self.config.events_dir / (session_id + LOG_SUFFIX)

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


async def _to_completion(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end even if the caller is cancelled meanwhile (then the
    cancellation is raised after it ends): for file work that must not stop halfway."""
    task = asyncio.ensure_future(coroutine)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("storage operation failed after its caller left: %r", task.exception())
        raise


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


def _read_log_range(
    path: Path,
    offset: int,
    start_seq: int,
    after_seq: int,
    last_seq: int,
    limit: int | None,
    max_bytes: int | None,
) -> list[StoredEvent]:
    """Events with ``after_seq < seq <= last_seq`` from the log, reading from ``offset``
    (where the event after ``start_seq`` begins), at most ``limit`` and ``max_bytes``
    (but at least one)."""
    events: list[StoredEvent] = []
    expected = start_seq + 1
    budget = max_bytes
    for _end, line in iter_lines(path, offset):
        event = _decode_line(path, line, expected)
        expected += 1
        if event.seq > after_seq:
            if budget is not None:
                budget -= event.size
                if budget < 0 and events:
                    break
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
        if event.seq >= last_seq:
            break
    return events


def _read_messages(
    path: Path, offset: int, after_seq: int, last_seq: int
) -> tuple[list[Message], int, int]:
    """Messages in the log after ``after_seq`` up to ``last_seq``; returns them with the
    seq and the offset reached."""
    messages: list[Message] = []
    seq, reached = after_seq, offset
    for end, line in iter_lines(path, offset):
        event = _decode_line(path, line, seq + 1)
        seq, reached = event.seq, end
        if isinstance(event.event, MessageEvent):
            messages.append(event.event.message)
        if seq >= last_seq:
            break
    if seq < last_seq:
        raise StorageError(f"log {path} ends at seq {seq}, expected at least {last_seq}")
    return messages, seq, reached


def _decode_line(path: Path, line: bytes, expected_seq: int) -> StoredEvent:
    try:
        event = decode_stored_event(line)
    except msgspec.DecodeError as exc:
        raise StorageError(f"log {path} is damaged near seq {expected_seq}: {exc}") from exc
    if event.seq != expected_seq:
        raise StorageError(f"log {path} has seq {event.seq} where {expected_seq} belongs")
    return event


class _KeyLine(msgspec.Struct):
    """Just the seq and the key of a log line: decoding skips the event."""

    seq: int
    key: str | None = None


_key_line_decoder = msgspec.json.Decoder(_KeyLine)


def _read_keys(path: Path, offset: int, start_seq: int, last_seq: int) -> list[tuple[int, str]]:
    """``(seq, key)`` of the keyed events after ``start_seq`` up to ``last_seq``."""
    pairs: list[tuple[int, str]] = []
    expected = start_seq + 1
    for _end, line in iter_lines(path, offset):
        try:
            parsed = _key_line_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise StorageError(f"log {path} is damaged near seq {expected}: {exc}") from exc
        if parsed.seq != expected:
            raise StorageError(f"log {path} has seq {parsed.seq} where {expected} belongs")
        expected += 1
        if parsed.key is not None:
            pairs.append((parsed.seq, parsed.key))
        if parsed.seq >= last_seq:
            break
    return pairs


async def open_from_url(url: StoreURL, options: StoreOptions) -> JsonlStorage:
    """``jsonl:///path?durability=os``: the store in that directory."""
    url.check_params({"durability"})
    durability = _durability(url)
    config = JsonlStorageConfig(
        url.location,
        default_ttl=options.default_ttl,
        max_sessions=options.max_sessions,
        cleanup_interval=options.cleanup_interval,
        durability=durability,
    )
    return await JsonlStorage.open(config)


def _durability(url: StoreURL) -> Durability:
    given = url.take("durability", "fsync")
    for mode in DURABILITY_MODES:
        if given == mode:
            return mode
    raise ValueError(
        f"store URL {url.text!r}: durability must be one of {', '.join(DURABILITY_MODES)}"
    )
