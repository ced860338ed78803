"""The JSONL storage's append path: seqs, idempotency keys, the group-commit writer, and
what happens when it reports lines written or failed.

- ``seq`` is assigned synchronously, in call order, before any await (``next_seq`` of
  the session's record runs ahead while appends are in flight); the writer writes each
  session's lines in that order. The items become stored events and log lines in
  ``append_items.py``.
- A session's idempotency-key window is read from its log (seqs and keys only) at its
  first keyed append, however many appends wait for it, and kept in the byte-bounded
  :class:`~.caches.KeyWindows`.
- The writer reports lines written before their appends are acknowledged; only then do
  the metadata (``last_seq``, ``message_count``, activity), the message index entries,
  the message cache and the subscribers move. When a write fails, the session's next
  seq goes back to its last written one and the keys of the failed appends are
  forgotten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from typing import Final

from bamboo_session.protocol.models import Message, MessageEvent, StoredEvent
from bamboo_session.tasks import detached

from ..base import KEY_WINDOW, Appended, AppendItem, AppendsSuspended, StorageError
from ..clock import StoreClock
from ..events import UserBytes, check_room, check_user_room
from ..failure_log import FailureLog
from ..feed import Feed
from ..keys import KeyWindow
from .append_items import batch_of, new_batch
from .batch import Batch, Group
from .caches import KeyWindows, MessageCache
from .checkpointer import Checkpointer
from .config import JsonlStorageConfig
from .reads import keys_after
from .record import SessionRecord, check_settled
from .tasks import FileJobs
from .wal import SegmentFile
from .writer import LogWriter

log = logging.getLogger(__name__)

# Sessions whose idempotency-key window stays in memory at most (besides the bytes).
KEY_WINDOWS_KEPT: Final = 1024


class WalKeptFull(AppendsSuspended):
    """The WAL kept whole since a failed sync holds more than ``wal_kept_max_bytes``:
    the store takes no appends and no deletes (each records something in the WAL)
    until it is opened again. Nothing was changed."""


class Appender:
    def __init__(
        self,
        config: JsonlStorageConfig,
        records: dict[str, SessionRecord],
        checkpoints: Checkpointer,
        messages: MessageCache,
        feed: Feed,
        jobs: FileJobs,
        clock: StoreClock,
    ) -> None:
        self.layout = config.layout
        self._clock = clock  # events' ts
        self.max_session_bytes = config.max_session_bytes
        self.max_user_bytes = config.max_user_bytes
        self.wal_kept_max_bytes = config.wal_kept_max_bytes
        self._wal_full_logged = False  # (once: then every append says so)
        # Once per outage; each session's log is a source of its own.
        self._failures = FailureLog(
            log, "appends to the logs", "appends to the log of session {!r}"
        )
        self.users = UserBytes()  # the log_end of each user's sessions, summed
        # Sessions forgotten while their files are deleted: the writer's reports still
        # move their records, which a failed delete brings back (JsonlStorage._remove).
        self.deleting: dict[str, SessionRecord] = {}
        self._jobs = jobs
        self._records = records
        self._checkpoints = checkpoints
        self._messages = messages
        self._feed = feed
        self.keys = KeyWindows(KEY_WINDOWS_KEPT, config.key_cache_bytes)
        self._keys_loading: dict[str, asyncio.Future[tuple[SessionRecord, KeyWindow]]] = {}
        wal = SegmentFile(self.layout, config.wal_segment_bytes, config.wal_segment_age)
        self.writer = LogWriter(
            self.layout,
            config.durability,
            config.max_open_logs,
            config.fsync_interval,
            config.commit_window,
            self._on_written,
            self._on_failed,
            wal if config.uses_wal else None,
            config.sync_helper,
            config.busy_window,
        )

    def append(
        self,
        record: SessionRecord,
        items: Sequence[AppendItem],
        window: KeyWindow | None,
        capped: bool = True,
    ) -> Awaitable[list[Appended]]:
        """Append the items (the caller checked, with no await since, that the session
        takes them, and got ``window`` from :meth:`key_window` if any item has a key);
        ``capped``: held to ``max_session_bytes`` (SessionFull past it, nothing
        written) and ``max_user_bytes`` (UserFull). What to await for what each item
        became. The hot path, not a coroutine: when every item is fresh that is the
        writer's future itself, which resolves to the results, so the caller's await
        is the append's only one (no frame of this layer made, entered and resumed)."""
        check_settled(record)
        if self.writer.wal_kept_bytes > self.wal_kept_max_bytes:
            self.check_wal_kept()  # refused
        # From here to submit nothing awaits: seqs follow call order, with no gaps.
        batch = new_batch(items, record.next_seq, window, self._clock.stamp())
        written = None
        if batch.events:
            if capped:
                adding, user = len(batch.data), record.meta.user_id
                check_room(record.log_end, adding, self.max_session_bytes)
                check_user_room(user, self.users.of(user), adding, self.max_user_bytes)
            # Not shielded: a caller cancelled meanwhile cancels only this future of its
            # own, and the writer writes the lines all the same (it skips a done future).
            written = self._submit(record, batch, window)
            if len(batch.events) == len(items):
                return written
        # Duplicates: acknowledged once their originals are.
        return self._with_originals(written, record.session_id, batch.results)

    async def _with_originals(
        self, written: Awaitable[object] | None, session_id: str, results: list[Appended]
    ) -> list[Appended]:
        """An append with duplicates: its fresh items written (``written``, if any),
        then acknowledged only once the appends its duplicates repeat are: if one of
        those fails, so does this call (the caller retries with the same key)."""
        if written is not None:
            await written
        newest = max((r.seq for r in results if r.duplicate), default=0)
        record = self._records.get(session_id)
        if record is None or newest <= record.meta.last_seq:
            return results
        await self.writer.flush()
        record = self._records.get(session_id)
        if record is None or newest > record.meta.last_seq:
            raise StorageError(
                f"the first append with this key to session {session_id!r} failed; retry"
            )
        return results

    async def import_events(
        self, record: SessionRecord, events: Sequence[StoredEvent], window: KeyWindow | None
    ) -> None:
        """Append events as they are, with their own seq, ts and key."""
        check_settled(record)
        self.check_wal_kept()
        session_id = record.session_id
        expected = record.next_seq + 1
        for event in events:
            if event.seq != expected:
                raise ValueError(f"import of {session_id!r}: seq {event.seq}, not {expected}")
            expected += 1
        batch = batch_of(list(events), [], imported=True)
        await asyncio.shield(self._submit(record, batch, window))

    def check_wal_kept(self) -> None:
        """Refuses every append, and every delete, once the WAL kept whole since a
        failed sync holds more than ``wal_kept_max_bytes`` (:class:`WalKeptFull`): it
        would grow until the disk is full, as nothing deletes it before the next open
        (which replays it, and settles the store). A delete writes only a small record,
        but a loop of them grows it all the same. What a delete under way writes after
        this check (its cancellation, a second record of it) is not refused: that
        keeps its outcome true at the next open, and counts once per delete."""
        kept = self.writer.wal_kept_bytes
        if kept <= self.wal_kept_max_bytes:
            return
        if not self._wal_full_logged:
            self._wal_full_logged = True
            log.error(
                "the WAL kept since a failed sync holds %d bytes, past wal_kept_max_bytes "
                "(%d): the store takes no appends and no deletes until it is opened again "
                "(restart the server; its open replays the WAL)",
                kept,
                self.wal_kept_max_bytes,
            )
        raise WalKeptFull(
            f"the store's WAL, kept whole since a failed sync, holds {kept} bytes, past "
            f"wal_kept_max_bytes ({self.wal_kept_max_bytes}); it takes no appends and no "
            "deletes until the store is opened again"
        )

    def _submit(
        self, record: SessionRecord, batch: Batch, window: KeyWindow | None
    ) -> asyncio.Future[list[Appended]]:
        session_id = record.session_id
        stored = batch.events
        if window is not None:
            keys = self.keys
            for event in stored:
                if event.key is not None:
                    keys.add(session_id, window, event.key, event.seq)
            # Windows grow here only: back within bounds, keeping this one (its append
            # is not in flight yet) and the ones of appends in flight.
            keys.trim(lambda other: other == session_id or self._busy(other))
        future = self.writer.submit(session_id, batch)
        record.next_seq = stored[-1].seq
        record.move_end(record.log_end + len(batch.data))
        return future

    def deleting_now(self, record: SessionRecord) -> None:
        """The (forgotten) session's files are being deleted: the writer's reports still
        move its record meanwhile, for a failed delete to bring it back as it is."""
        self.deleting[record.session_id] = record

    def deleted(self, record: SessionRecord) -> None:
        """Its delete is over, done or failed (then the record is back, or gone). Only
        now do its bytes leave its user's sum, if it is gone: until its files are, a
        crash or a failed delete leaves it there, and the room it held must not have
        gone to the user's other sessions meanwhile."""
        if self.deleting.get(record.session_id) is record:
            del self.deleting[record.session_id]
        if self._records.get(record.session_id) is not record:
            record.uncount()

    async def key_window(self, session_id: str) -> KeyWindow:
        """The session's key window: cached, or read from its log once, however many
        appends wait for it."""
        window = self.keys.get(session_id)
        if window is not None:
            return window
        loading = self._keys_loading.get(session_id)
        if loading is None:
            loading = detached(self._read_key_window(session_id), "bamboo-jsonl-keys")
            self._keys_loading[session_id] = loading
            loading.add_done_callback(lambda _: self._keys_loading.pop(session_id, None))
        record, loaded = await asyncio.shield(loading)
        # Loaded and kept, then maybe dropped before this caller resumed: another
        # session's window, kept in the same turns, made room (this session had no
        # append in flight then). Its append is about to go in it, with no await
        # between: kept again, it is the session's window while that append is in
        # flight, and a retry of its key finds it there. Read again from the log
        # instead, it missed the append not yet written: the retry was stored twice.
        cached = self.keys.get(session_id)
        if cached is not None:
            return cached
        if self._records.get(session_id) is record:  # not of a log that went meanwhile
            self.keys.put(session_id, loaded, self._busy)
        return loaded

    async def _read_key_window(self, session_id: str) -> tuple[SessionRecord, KeyWindow]:
        """The session's key window read from its log, and the record it was read for."""
        record = self._records[session_id]
        path = self.layout.log_file(session_id)
        window = KeyWindow()
        after = max(0, record.meta.last_seq - KEY_WINDOW)
        while True:
            # The log as written now. An append may be written while this reads: one
            # of an earlier load's caller, whose window was kept again (key_window)
            # and dropped once it was written. Its key is read in the next round.
            read_to, end = record.meta.last_seq, record.log_size
            low, high = record.bracket(after)
            pairs = await self._jobs.run(keys_after, path, after, low, high, end)
            for seq, key in pairs:
                window.add(key, seq)
            if self._records.get(session_id) is not record:
                return record, window  # a log that went meanwhile: nothing kept
            cached = self.keys.get(session_id)
            if cached is not None:
                # Kept again by an earlier load's caller while this one read: it holds
                # the keys of appends this read may have missed.
                return record, cached
            if record.meta.last_seq <= read_to:  # nothing written since it began
                break
            after = read_to
        window.forget_before(record.meta.last_seq)
        self.keys.put(session_id, window, self._busy)
        return record, window

    def _busy(self, session_id: str) -> bool:
        """Whether appends to the session are in flight (its key window holds them)."""
        record = self._records.get(session_id)
        return record is not None and record.next_seq != record.meta.last_seq

    # -- the writer's reports -------------------------------------------------------

    def _on_written(self, group: Group) -> None:
        """The writer wrote (and synced) the group's appends, before it answers them."""
        session_id = group.session_id
        self._failures.succeeded(session_id)
        record = self._records.get(session_id)
        known = record is not None
        if record is None:
            # Deleted while its appends were queued: its record still follows its log,
            # should the delete fail and bring it back (JsonlStorage._restore).
            record = self.deleting.get(session_id)
            if record is None:
                return
        meta = record.meta
        batches = group.batches
        if len(batches) == 1:  # most groups: one append to the session
            batch = batches[0]
            events = batch.events
            if batch.messages:
                self._add_messages(record, group.size_before, batch, cache=known)
        else:
            events, offset = [], group.size_before
            for batch in batches:
                events += batch.events
                if batch.messages:
                    self._add_messages(record, offset, batch, cache=known)
                offset += len(batch.data)
        last = events[-1]
        record.written(last.seq, group.new_size)
        if not batch.imported:  # (the last append's)
            meta.touch(max(last.ts, meta.last_activity_at))
        if not known:
            return  # no cache, checkpoint or subscriber of it is left to tell
        self.keys.forget_before(session_id, last.seq)
        self._checkpoints.appended(record)
        self._feed.publish(session_id, events)

    def _add_messages(
        self, record: SessionRecord, offset: int, batch: Batch, cache: bool = True
    ) -> None:
        """The batch's messages: counted, indexed (pending entries), cached."""
        meta = record.meta
        first_seq = batch.events[0].seq
        messages: list[tuple[Message, int]] = []
        for seq, at, length in batch.messages:
            record.add_message(seq, offset + at, length)
            event = batch.events[seq - first_seq].event
            assert isinstance(event, MessageEvent)
            messages.append((event.message, length + 1))
        if cache:
            self._messages.extend(record.session_id, meta.message_count, messages)
        meta.message_count += len(messages)

    def _on_failed(self, session_id: str, error: OSError, uncut: int) -> None:
        failure = f"appending to the log of session {session_id!r} failed: {error}"
        self._failures.failed(session_id, failure, error.errno)
        # A session being deleted too: should the delete fail, it comes back as its
        # log is, without the seqs and bytes of appends that were never written.
        record = self._records.get(session_id) or self.deleting.get(session_id)
        if record is not None:
            # Seqs handed out after the last written one were never stored: reuse them.
            record.next_seq = record.meta.last_seq
            # Failed lines the writer could not cut away yet are in the file: they
            # count in the session's room and its user's sum until they are cut.
            record.uncut = uncut
            record.move_end(record.log_size + uncut)
            self.keys.discard_from(session_id, record.next_seq + 1)
