"""Pages of a session's history and log (and of a listing) for replies, bounded in
items and in bytes.

A page holds at most ``limit`` items and about ``max_bytes`` of them (always at least
one, so that a client always makes progress), and reading one costs about what it
holds: events come from ``read_events(max_bytes=…)``; the history is read newest first
in chunks sized from what the previous chunk weighed, each with the budget left
(``get_history_page(max_bytes=…)``), so a history of large messages is not read a
thousand at a time to answer with a few.

:class:`PageReads` is how many pages the server reads at once (streamed answers'
pages in at most half of the slots), and how long a read may take before it is
abandoned; :class:`SharedRead`, a store call that whoever asks while it runs waits for
(``/readyz``'s and ``/metrics``'s), under the same deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeVar

import msgspec

from bamboo_session.persistence.base import HistoryPage, SessionStorage, StorageError
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.frames import (
    EventRecord,
    Events,
    EventsRequest,
    History,
    HistoryRequest,
)
from bamboo_session.protocol.models import Message, StoredEvent

FIRST_CHUNK: Final = 16  # messages read first, before their size is known
MAX_CHUNK: Final = 256

_json = msgspec.json.Encoder()
T = TypeVar("T")


# Reads given up on whose store call has not ended (each a task): past this many, a
# read fails at once instead of adding one. A threaded store's call (JSONL, SQLite)
# waits for one of its pool's threads before it hands its job over, and once it has,
# ends only when the job has ended in that thread (persistence/threads.py): every read
# still at the store is counted here, and none waits uncounted in a pool's queue.
ABANDONED_READS_MAX: Final = 64


class StoreTimeout(StorageError):
    """The store did not answer a read in time (a Redis that stopped, a disk that
    stalls): the read was abandoned."""


class PageReads:
    """The server's page reads, over all connections and the HTTP API: ``history`` and
    ``events`` pages, and the pages of replays that are not in memory.

    At most ``count`` are read at once (``--read-slots``, 8 by default), each in one of
    the ``slots``: a page decoded is several times its bytes, and 50 peers asking at
    once without reading took RSS to 670 MiB. Each must end within
    ``timeout`` seconds, its wait for a slot included, or it is abandoned with
    :class:`StoreTimeout` and its slot freed: a store that hangs would otherwise keep
    every slot, and every later read would wait behind them for as long as it hangs.

    The pages of streamed answers (the whole history of ``GET /api/v1/sessions/{id}``)
    are read in at most half of the slots (:meth:`stream_read`), so that the other half
    is always left to pages asked for one at a time: 100 to 200 streamed readers,
    queued for every slot, put a ``history`` or ``events`` page 0.4 to 1.4 s behind."""

    __slots__ = ("abandoned", "count", "slots", "stream_count", "stream_slots", "timeout")

    def __init__(self, slots: int, timeout: float) -> None:
        self.count = slots
        self.slots = asyncio.Semaphore(slots)
        self.stream_count = max(1, slots // 2)
        self.stream_slots = asyncio.Semaphore(self.stream_count)
        self.timeout = timeout
        self.abandoned = 0  # reads given up on whose store call has not ended yet

    def deadline(self, loop: asyncio.AbstractEventLoop | None = None) -> float:
        """When a read that starts now must end (the event loop's clock). ``loop``: the
        running loop, if the caller holds it (its look-up is a getpid syscall on 3.11)."""
        return (loop or asyncio.get_running_loop()).time() + self.timeout

    async def read(self, read: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """``read()`` in a slot, by ``deadline`` (default: ``timeout`` from now)."""
        deadline = self.deadline() if deadline is None else deadline
        return await self._holding(self.slots, lambda: self.lookup(read, deadline), deadline)

    async def stream_read(
        self, read: Callable[[], Awaitable[T]], deadline: float | None = None
    ) -> T:
        """A page of a streamed answer: :meth:`read`, once one of the slots streams may
        hold is free, all by ``deadline`` (default: ``timeout`` from now)."""
        deadline = self.deadline() if deadline is None else deadline
        return await self._holding(self.stream_slots, lambda: self.read(read, deadline), deadline)

    async def _holding(
        self, slots: asyncio.Semaphore, then: Callable[[], Awaitable[T]], deadline: float
    ) -> T:
        """``then()`` while holding one of ``slots``, taken by ``deadline``."""
        try:
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        except TimeoutError:
            raise self._late() from None
        try:
            return await then()
        finally:
            slots.release()

    async def lookup(self, read: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """``read()`` by ``deadline``, without a slot: a store read that is not a page (a
        session's metadata, a listing), or one that has its slot already."""
        deadline = self.deadline() if deadline is None else deadline
        if self.abandoned >= ABANDONED_READS_MAX:
            # The store answers none of them: one more would only pile up behind.
            raise StoreTimeout(f"the store has not answered {self.abandoned} reads")
        loop = asyncio.get_running_loop()
        # In a task of its own, given up on at the deadline rather than awaited until
        # its cancellation lands: a cancelled redis-py call may not end (its
        # asyncio.wait_for swallows a cancellation that meets a finished send, on
        # Python 3.11), and the slot must be freed all the same.
        work = asyncio.ensure_future(read())
        try:
            await asyncio.wait((work,), timeout=max(0.0, deadline - loop.time()))
        finally:
            late = not work.done()  # before cancel(), which ends a mere future at once
            if late:
                work.cancel()  # abandoned: it ends when its store call does
                self.abandoned += 1
                work.add_done_callback(self._forget)
        if late:
            raise self._late()
        return work.result()

    def expire(self, answer: asyncio.Future[Any], deadline: float) -> asyncio.TimerHandle:
        """Fails ``answer`` with :class:`StoreTimeout` at ``deadline`` unless it is done
        by then: for an answer that an actor gives after store calls of its own.
        Whoever gave up on it sees that it is done, and the actor that finds it done
        skips or undoes the work (server/control.py ``attach``)."""
        return answer.get_loop().call_at(deadline, self._expire, answer)  # no look-up

    async def within(self, deadline: float, waiting: Awaitable[T]) -> T:
        """``waiting`` by ``deadline`` (cancelled then), or :class:`StoreTimeout`."""
        try:
            async with asyncio.timeout_at(deadline):
                return await waiting
        except TimeoutError:
            raise self._late() from None

    def _expire(self, answer: asyncio.Future[Any]) -> None:
        if not answer.done():
            answer.set_exception(self._late())

    def _late(self) -> StoreTimeout:
        return StoreTimeout(f"no answer from the store within {self.timeout:g} s")

    def _forget(self, work: asyncio.Future[Any]) -> None:
        self.abandoned -= 1
        if not work.cancelled():
            work.exception()  # an abandoned read's failure: nobody is waiting for it


class SharedRead(Generic[T]):
    """``call()`` at most once at a time: whoever asks while it runs waits for the same
    call, within the deadline it was started with (``reads.timeout``), then fails with
    :class:`StoreTimeout`. A call the store does not answer is not started again until
    it ends, however often it is asked for: each would hold a thread, or a connection,
    for as long as the store hangs."""

    __slots__ = ("_call", "_deadline", "_reads", "_running")

    def __init__(self, reads: PageReads, call: Callable[[], Awaitable[T]]) -> None:
        self._reads = reads
        self._call = call
        self._running: asyncio.Future[T] | None = None
        self._deadline = 0.0

    async def result(self) -> T:
        running = self._running
        if running is None or running.done():
            running = self._running = asyncio.ensure_future(self._call())
            running.add_done_callback(_retrieve)  # its askers may all have given up
            self._deadline = self._reads.deadline()
        # Shielded: an asker that gives up leaves the call to the others, and running.
        return await self._reads.lookup(lambda: asyncio.shield(running), self._deadline)


def _retrieve(call: asyncio.Future[Any]) -> None:
    if not call.cancelled():
        call.exception()


def message_size(message: Message) -> int:
    return len(_json.encode(message))


async def history_page(
    storage: SessionStorage,
    session_id: str,
    limit: int,
    before: int | None,
    max_bytes: int,
    epoch: str | None = None,
) -> HistoryPage:
    """The newest messages before index ``before`` (default: the end), oldest first: at
    most ``limit``, and no more than ``max_bytes`` of encoded messages but at least one.
    ``has_more`` says whether older ones exist. With ``epoch``, of that epoch's log
    only. Raises what ``get_history_page`` does."""
    newest_first: list[Message] = []
    used = 0
    end = before
    chunk = min(limit, FIRST_CHUNK)
    start: int | None = None
    while True:
        # The budget left: the store reads no further than the first message past it.
        budget = max(max_bytes - used, 0)
        page = await storage.get_history_page(session_id, chunk, end, epoch=epoch, max_bytes=budget)
        taken = 0
        for message in reversed(page.messages):
            size = message_size(message)
            if newest_first and used + size > max_bytes:
                break
            newest_first.append(message)
            used += size
            taken += 1
        start = page.start + len(page.messages) - taken
        remaining = limit - len(newest_first)
        if taken < len(page.messages) or not page.has_more or remaining <= 0:
            break
        end = page.start
        average = max(1, used // len(newest_first))
        chunk = max(1, min(remaining, MAX_CHUNK, (max_bytes - used) // average + 1))
    newest_first.reverse()
    return HistoryPage(newest_first, start, start > 0)


async def events_page(
    storage: SessionStorage,
    session_id: str,
    after_seq: int,
    limit: int,
    max_bytes: int,
    epoch: str | None = None,
) -> list[StoredEvent]:
    """Events after ``after_seq``, oldest first: at most ``limit``, and no more than
    ``max_bytes`` of encoded events but at least one. With ``epoch``, of that epoch's
    log only."""
    return await storage.read_events(session_id, after_seq, limit, max_bytes, epoch=epoch)


def within_bytes(items: Sequence[T], max_bytes: int) -> list[T]:
    """The first of ``items`` whose JSON fits in ``max_bytes`` (at least one)."""
    kept: list[T] = []
    used = 0
    for item in items:
        used += len(_json.encode(item))
        if kept and used > max_bytes:
            break
        kept.append(item)
    return kept


def within_frame(reply: History | Events, codec: Codec, max_frame_bytes: int) -> History | Events:
    """``reply`` with as many of its items as its frame in ``codec`` has room for within
    ``max_frame_bytes`` (at least one): the events first in the log, the newest
    messages (then ``has_more``). ``--max-page-bytes`` counts the items as stored, not
    their records' ``seq`` and ``ts``, nor a MessagePack viewer's 9-byte floats, and a
    viewer reading frames of that limit closed 1009 at such a page, then asked again."""
    empty: History | Events
    if isinstance(reply, Events):
        items: Sequence[Any] = reply.events
        empty = msgspec.structs.replace(reply, events=[])
    else:
        items = reply.messages[::-1]  # the newest are kept
        empty = msgspec.structs.replace(reply, messages=[])
    # Each item's own encoding and a separator (JSON's comma), and up to 4 bytes more of
    # a MessagePack array's length than the empty page's.
    room = max_frame_bytes - len(codec.encode(empty)) - 4
    kept = 0
    for item in items:
        room -= len(codec.encode(item)) + 1
        if room < 0 and kept:
            break
        kept += 1
    if kept == len(items):
        return reply
    if isinstance(reply, Events):
        return msgspec.structs.replace(reply, events=reply.events[:kept])
    return msgspec.structs.replace(reply, messages=reply.messages[-kept:], has_more=True)


async def history_reply(
    storage: SessionStorage,
    session_id: str,
    request: HistoryRequest,
    max_messages: int,
    max_bytes: int,
    epoch: str | None = None,
) -> tuple[History, int]:
    """The ``history`` reply to ``request``: one page, at most the server's maximums;
    and the index just past its newest message (what an error about that message
    names, server/page_requests.py)."""
    limit = min(request.limit, max_messages)
    page = await history_page(storage, session_id, limit, request.before, max_bytes, epoch)
    return History(page.messages, page.has_more, id=request.id), page.start + len(page.messages)


async def events_reply(
    storage: SessionStorage,
    session_id: str,
    request: EventsRequest,
    max_events: int,
    max_bytes: int,
    epoch: str | None = None,
) -> Events:
    """The ``events`` reply to ``request``: one page, each event as stored (its JSON is
    not encoded again), the session's last seq, read under the same epoch fence as the
    page (:func:`page_and_last_seq`), and that epoch, the log's the page was read from
    (without ``epoch``, the one stored when the request is read)."""
    limit = min(request.limit, max_events)
    if epoch is None:
        epoch = await storage.epoch(session_id)
    stored, last_seq = await page_and_last_seq(
        storage, session_id, request.after_seq, limit, max_bytes, epoch
    )
    records = [EventRecord(e.seq, e.ts, e.event_json) for e in stored]
    return Events(records, last_seq, id=request.id, epoch=epoch)


async def page_and_last_seq(
    storage: SessionStorage,
    session_id: str,
    after_seq: int,
    limit: int,
    max_bytes: int,
    epoch: str | None = None,
) -> tuple[list[StoredEvent], int]:
    """A page of events (:func:`events_page`) and the last seq of the same log: both
    read with ``epoch`` (without one, the epoch stored when the page is read), so a
    session deleted or replaced between the two reads is SessionNotFound, never a
    page of one log with the last seq of another."""
    if epoch is None:
        epoch = await storage.epoch(session_id)
    stored = await events_page(storage, session_id, after_seq, limit, max_bytes, epoch)
    last_seq = await storage.last_seq(session_id, epoch=epoch)
    return stored, max(last_seq, stored[-1].seq if stored else 0)
