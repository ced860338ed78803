"""Reading one session's log, each read no bigger than what it is asked for:

- :func:`events_after`: events after a seq, at most ``limit`` and ``max_bytes``; it
  bisects the log to the first one (``scan.locate``) and stops reading once either
  budget is used;
- :func:`keys_after`: the ``(seq, key)`` pairs of the last appends (the idempotency
  window), decoding seqs and keys only;
- :class:`HistoryReader`: pages of the message history, from the message cache or
  through the message index: a page of N messages reads N entries and N log lines,
  however long the history, and with a budget in bytes only the newest lines the
  entries' lengths say fit it (or the oldest, read forwards).

The functions block (worker threads); :class:`HistoryReader` is the asyncio side.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import msgspec

from bamboo_session.protocol.models import Message, MessageEvent, StoredEvent

from ..events import count_within
from . import message_index
from .caches import MessageCache
from .checkpoint import read_preamble
from .layout import Layout
from .message_index import Entry, StaleIndex
from .record import Place, SessionRecord
from .scan import decode_key, decode_stored_event, lines, locate, read_spans
from .tasks import FileJobs

_encode = msgspec.json.encode


async def read_events(
    jobs: FileJobs,
    layout: Layout,
    record: SessionRecord,
    after_seq: int,
    limit: int | None,
    max_bytes: int | None,
) -> list[StoredEvent]:
    """The session's written events after ``after_seq`` (nothing in flight is seen)."""
    after_seq = max(after_seq, 0)
    if after_seq >= record.meta.last_seq or (limit is not None and limit <= 0):
        return []
    low, high = record.bracket(after_seq)
    path = layout.log_file(record.session_id)
    events: list[StoredEvent] = await jobs.run(
        events_after, path, after_seq, low, high, record.log_size, limit, max_bytes
    )
    return events


def events_after(
    path: str,
    after_seq: int,
    low: Place,
    high: Place,
    end: int,
    limit: int | None,
    max_bytes: int | None,
) -> list[StoredEvent]:
    """Events with seq > ``after_seq`` in ``log[.., end)``, oldest first; at most
    ``limit``, and within ``max_bytes`` of encoded events (but at least one)."""
    seq, offset = locate(path, after_seq, low, high)
    events: list[StoredEvent] = []
    budget = max_bytes
    for event, _start, _stop in lines(path, offset, seq, decode_stored_event, end):
        if event.seq <= after_seq:
            continue
        if budget is not None:
            budget -= event.size
            if budget < 0 and events:
                break
        events.append(event)
        if limit is not None and len(events) >= limit:
            break
    return events


def keys_after(
    path: str, after_seq: int, low: Place, high: Place, end: int
) -> list[tuple[int, str]]:
    """``(seq, key)`` of the keyed events with seq > ``after_seq`` in ``log[.., end)``."""
    seq, offset = locate(path, after_seq, low, high)
    return [
        (head.seq, head.key)
        for head, _start, _stop in lines(path, offset, seq, decode_key, end)
        if head.seq > after_seq and head.key is not None
    ]


def messages_at(path: str, entries: Sequence[Entry]) -> list[tuple[Message, int]]:
    """The messages the entries point at, with their lines' sizes; StaleIndex when a
    line there is not that message."""
    raw = read_spans(path, [(offset, length) for _seq, offset, length in entries])
    found = []
    for (seq, _offset, length), line in zip(entries, raw, strict=True):
        try:
            stored = decode_stored_event(line)
            event = stored.event
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise StaleIndex(f"log {path}: no message line where the index says") from None
        if stored.seq != seq or not isinstance(event, MessageEvent):
            raise StaleIndex(f"log {path}: seq {stored.seq} where the index says {seq}")
        found.append((event.message, length + 1))
    return found


def _fitting(
    older: Sequence[Message], newer: Sequence[tuple[Message, int]], max_bytes: int | None
) -> int:
    """How many of the ``older`` messages (the preamble's) fit what ``max_bytes`` leaves
    after the ``newer`` ones, with their sizes: at least one if there are no newer."""
    if max_bytes is None:
        return len(older)
    sizes = (len(_encode(message)) for message in reversed(older))
    if not newer:
        return count_within(sizes, max_bytes)
    # The newer ones count as one item: the at-least-one is theirs.
    return count_within(chain([sum(size for _, size in newer)], sizes), max_bytes) - 1


def _entries_within(
    entries: Sequence[Entry], max_bytes: int | None, oldest_first: bool, spent: int | None
) -> Sequence[Entry]:
    """The newest of ``entries`` whose lines fit ``max_bytes`` (at least one), or the
    oldest; ``spent``: what older messages (the preamble's) already took of it, so that
    the at-least-one is theirs."""
    if not oldest_first:
        kept = count_within((length + 1 for _, _, length in reversed(entries)), max_bytes)
        return entries[len(entries) - kept :]
    sizes = (length + 1 for _, _, length in entries)
    if spent is None:
        return entries[: count_within(sizes, max_bytes)]
    return entries[: count_within(chain([spent], sizes), max_bytes) - 1]


class HistoryReader:
    """Pages of a session's history: the preamble (old format), then the log's
    messages."""

    def __init__(self, layout: Layout, cache: MessageCache, writable: bool, jobs: FileJobs) -> None:
        self.layout = layout
        self.cache = cache
        self.writable = writable
        self.jobs = jobs

    async def read(
        self, record: SessionRecord, start: int, end: int, max_bytes: int | None = None
    ) -> list[Message]:
        """History messages ``start .. end`` (which must exist); with ``max_bytes``,
        only the newest of them whose lines fit it (at least one), the rest unread."""
        session_id = record.session_id
        cached = self.cache.get(session_id, start, end, max_bytes)
        if cached is not None:
            return cached
        preamble = record.preamble
        first, last = max(start, preamble) - preamble, end - preamble
        found: list[tuple[Message, int]] = []
        if last > first:
            found = await self._log_messages(record, first, last, max_bytes)
            newest = end == record.meta.message_count
            found_start = end - len(found)
            if newest and found_start >= preamble and self.cache.get(session_id, end, end) is None:
                self.cache.extend(session_id, found_start, found)  # the newest: seed the cache
        messages = [message for message, _size in found]
        if start < preamble and len(found) == max(last - first, 0):
            older = (await self._preamble(record))[start : min(end, preamble)]
            messages[:0] = older[len(older) - _fitting(older, found, max_bytes) :]
        return messages

    async def read_forward(
        self, record: SessionRecord, start: int, end: int, max_bytes: int | None = None
    ) -> list[Message]:
        """:meth:`read` oldest first: with ``max_bytes``, only the oldest of the
        messages ``start .. end`` whose lines fit it (at least one), the rest unread."""
        cached = self.cache.get(record.session_id, start, end, max_bytes, oldest_first=True)
        if cached is not None:
            return cached
        preamble = record.preamble
        messages: list[Message] = []
        spent: int | None = None  # what the preamble's messages took of the budget
        if start < preamble:
            older = (await self._preamble(record))[start : min(end, preamble)]
            sizes = [len(_encode(message)) for message in older]
            messages = older[: count_within(sizes, max_bytes)]
            if len(messages) < len(older):
                return messages
            spent = sum(sizes)
        first, last = max(start, preamble) - preamble, end - preamble
        if last > first:
            found = await self._log_messages(
                record, first, last, max_bytes, oldest_first=True, spent=spent
            )
            messages += [message for message, _size in found]
        return messages

    async def _preamble(self, record: SessionRecord) -> list[Message]:
        if record.preamble_messages is not None:
            return record.preamble_messages
        messages: list[Message] = await self.jobs.run(
            read_preamble, self.layout.preamble(record.session_id)
        )
        return messages

    async def _log_messages(
        self,
        record: SessionRecord,
        first: int,
        last: int,
        max_bytes: int | None,
        oldest_first: bool = False,
        spent: int | None = None,
    ) -> list[tuple[Message, int]]:
        """The log's messages ``first .. last`` within ``max_bytes`` (_entries_within)."""
        args = (record, first, last, max_bytes, oldest_first, spent)
        try:
            return await self._try_log_messages(*args)
        except StaleIndex:
            record.forget_index()  # rebuilt from the log by the next preparation
            return await self._try_log_messages(*args)

    async def _try_log_messages(
        self,
        record: SessionRecord,
        first: int,
        last: int,
        max_bytes: int | None,
        oldest_first: bool,
        spent: int | None,
    ) -> list[tuple[Message, int]]:
        entries = await self._entries(record, first, last)
        # The index knows each line's length: lines past the budget are never read.
        kept = _entries_within(entries, max_bytes, oldest_first, spent)
        found: list[tuple[Message, int]] = await self.jobs.run(
            messages_at, self.layout.log_file(record.session_id), kept
        )
        return found

    async def _entries(self, record: SessionRecord, first: int, last: int) -> list[Entry]:
        """The index entries of the log's messages ``first .. last``."""
        if not record.needs_index_file(first):
            return [record.pending_entry(p) for p in range(first, last)]
        async with record.checkpoint_lock():
            await self.prepare_index(record)
            count = record.index.count
            if count + record.pending_count != record.log_messages:
                raise StaleIndex(f"the message index of {record.session_id!r} is incomplete")
            entries: list[Entry] = []
            if first < count:
                entries = await self.jobs.run(
                    message_index.read,
                    self.layout.message_index(record.session_id),
                    first,
                    min(last, count) - first,
                )
        return entries + [record.pending_entry(p) for p in range(max(first, count), last)]

    async def prepare_index(self, record: SessionRecord) -> None:
        """Make the index file describe every message older than the pending ones (or,
        read-only, keep those the file lacks in memory). Under the record's lock."""
        if record.index_checked and record.index.offset == record.pending_offset:
            return
        session_id = record.session_id
        coverage, gap = await self.jobs.run(
            message_index.prepare,
            self.layout.message_index(session_id),
            self.layout.log(session_id),
            record.meta.epoch,
            record.index,
            record.pending_seq,
            record.pending_offset,
            self.writable,
        )
        record.index_in_memory(coverage, gap)
