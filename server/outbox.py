"""What flows from a session to one attached peer: the bounded outbox.

An :class:`Outbox` is one connection's queue of outbound frames (server/outbound.py),
bounded in frames and in bytes and charged to the process's memory budget: producers
never wait on it; when it is full, the connection is closed (4429) and the client
resumes from the log, unless a replay is being sent and making progress: then the
events queued behind it are read back with it (server/read_back.py). When the
connection's writer task runs to send what it holds, and what one write takes of it,
is server/writer_life.py's, the outbox's base; what it has handed its socket of the
session's events, and the check of each frame on its way there,
server/sent_events.py's, its base's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from bamboo_session.protocol.codec import JSON, Codec
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.wakeup import Wakeup

from .budget import NO_LIMIT, MemoryBudget
from .outbound import EventOutbound, Outbound
from .read_back import ReadBackLag, Replay, read_back
from .writer_life import WriterLife

if TYPE_CHECKING:
    from .metrics import Metrics


class CloseRequest:
    """The last item of an outbox: close the connection with ``code``. ``overflow``
    marks a close at once, whose backlog was dropped: a reader too slow for its queue
    or its replay, or a replay that could not go on. ``replay_goes_on`` marks a close
    that lets a replay under way finish first (the session closed or expired: its
    peers cannot resume), until the connection's close timeout cuts it
    (server/closing.py)."""

    __slots__ = ("code", "overflow", "reason", "replay_goes_on")

    def __init__(
        self, code: CloseCode, reason: str, *, overflow: bool = False, replay_goes_on: bool = False
    ) -> None:
        self.code = code
        self.reason = reason
        self.overflow = overflow
        self.replay_goes_on = replay_goes_on


OutboxItem = Outbound | Replay | CloseRequest


_COMPACT_AFTER = 1024


class Outbox(WriterLife):
    """A connection's bounded queue of frames, filled by producers that never wait; when
    its writer task runs is its base's (server/writer_life.py), what of them may reach
    the socket its base's base's (server/sent_events.py)."""

    __slots__ = (
        "_backed_up",
        "_closing_wakeup",
        "_settled",
        "closing",
        "connection_id",
        "handed_over",
        "in_flight",
        "limit",
        "max_batch_bytes",
        "max_batch_items",
        "max_bytes",
        "max_in_flight",
        "on_close",
        "overflow_close",
        "read_back_lag",
        "replay_under_way",
        "role",
    )

    def __init__(
        self,
        connection_id: str,
        role: str,
        limit: int,
        on_close: Callable[[CloseRequest], None] | None = None,
        *,
        max_bytes: int = 0,
        codec: Codec = JSON,
        budget: MemoryBudget | None = None,
        session_id: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(session_id, metrics)
        self.connection_id = connection_id
        self.role = role
        # What its welcome offers: batch frames of this many items at most (0: none).
        self.max_batch_items = 0
        self.max_batch_bytes = 0
        self.limit = limit  # frames
        self.max_bytes = max_bytes if max_bytes > 0 else NO_LIMIT
        self.codec = codec  # what the writer encodes frames with: their size in bytes
        self.budget = budget if budget is not None else MemoryBudget(0)
        self.bytes = 0
        # Over the process's budget, a queue that is backing up goes first: one that
        # keeps up holds a few frames at most, and is left alone.
        self._backed_up = min(self.max_bytes, 8 * 1024 * 1024) // 8
        # Told of the close as soon as it is asked for: a slow reader's writer is likely
        # stuck in a send, so an overflow is closed from outside it at once (and any
        # other close after a grace period, should the peer stop reading meanwhile).
        self.on_close = on_close
        self.closing: CloseRequest | None = None
        # How an overflow closes it: 4429, or a stop's close while the stop delivers the
        # backlog (server/catching_up.py), which promises its peer more than 4429 does.
        self.overflow_close = (CloseCode.TOO_SLOW, "too slow to read: send queue full")
        self.replay_under_way: Replay | None = None  # the replay it took (get), being sent
        # Made at its first read-back, let go once its replays have made it up.
        self.read_back_lag: ReadBackLag | None = None
        # Its actor retired leaving it open, for a delete's outcome to close it
        # (server/room.py, HeldConnections): the store may not list its session meanwhile.
        self.handed_over = False
        # A list read from ``_head`` rather than a deque: an idle connection's empty
        # list costs 56 bytes where an empty deque keeps a 760-byte block.
        self._items: list[OutboxItem] = []
        self._head = 0
        # Requests read but not answered yet: capped so that a burst of replies always
        # fits in the queue, which keeps a pipelining publisher from closing itself.
        self.in_flight = 0
        self.max_in_flight = max(1, limit // 2)
        # Made at the first wait for a reply: most connections never wait, and an idle
        # one holds no more than it must.
        self._settled: Wakeup | None = None
        # Made at the first wait for the close (a replay waiting its peer's debt).
        self._closing_wakeup: Wakeup | None = None

    def __len__(self) -> int:
        return len(self._items) - self._head

    @property
    def replaying(self) -> bool:
        """While its writer sends a replay it took (get)."""
        return self.replay_under_way is not None

    def _head_item(self) -> OutboxItem:
        return self._items[self._head]

    def _popleft(self) -> OutboxItem:
        item = self._items[self._head]
        size = 0
        if isinstance(item, Outbound):
            size = item.event_size or len(item.framed(self.codec))
        self._taken(self._head + 1, size)
        return item

    def _taken(self, head: int, size: int) -> None:
        """The items before ``head`` left the queue, ``size`` bytes of frames."""
        self.bytes -= size
        self.budget.used -= size
        items = self._items
        if head == len(items):
            items.clear()  # frees the array: drained is the common, idle case
            head = 0
        elif head >= _COMPACT_AFTER:
            del items[:head]  # a queue that never drains still frees what was sent
            head = 0
        self._head = head

    def push(self, item: Outbound | Replay) -> None:
        """Queue ``item``; a full outbox closes its connection with 4429 instead. One
        frame always fits in an empty queue, whatever its size."""
        if self.closing is not None:
            return
        size = 0
        # By exact type: isinstance(item, Outbound) of an event's frame (a subclass)
        # asks the Struct's metaclass, about 800 machine instructions a frame.
        if type(item) is not Replay:
            size = item.event_size or len(item.framed(self.codec))
        items = self._items
        if len(items) > self._head and self._full(size):
            if not self._read_back(item, size):
                self.overflow()
            return
        items.append(item)
        self.bytes += size
        self.budget.used += size
        # _notify's common case, inline: a frame for a connection whose writer is
        # absent goes to the flusher, once per turn.
        if self._scheduled:
            return
        if self._writer_absent and self.flusher is not None:
            self._scheduled = True
            self.flusher.add(self)
        else:
            self._notify()

    def _full(self, size: int) -> bool:
        """Whether one more frame of ``size`` bytes would overflow the queue."""
        after, budget = self.bytes + size, self.budget
        return (
            len(self) >= self.limit
            or after > self.max_bytes
            or (budget.used > budget.limit and after > self._backed_up)
        )

    def _queue(self, item: Outbound | Replay, size: int) -> None:
        self._items.append(item)
        self.bytes += size
        self.budget.used += size
        self._notify()

    def _read_back(self, item: Outbound | Replay, size: int) -> bool:
        """Whether ``item`` was taken where the queue had no room, by leaving the events
        queued behind the replay under way to be read back with it (server/read_back.py),
        and ``item`` with them if it follows them."""
        replay = self.replay_under_way
        if replay is None:
            return False
        kept, events, freed = read_back(self._items[self._head :], replay)
        self._items, self._head = kept, 0
        self.bytes -= freed
        self.budget.used -= freed
        tail = kept[-1] if kept else replay
        if (
            isinstance(item, EventOutbound)
            and type(tail) is Replay
            and item.seq == tail.through + 1
        ):
            tail.through = item.seq  # the newest of them: it is read back too
            return not self._left_behind(events + 1, freed + size)
        if self._left_behind(events, freed) or (len(self) and self._full(size)):
            return False
        self._queue(item, size)
        return True

    def _left_behind(self, events: int, size: int) -> bool:
        """Counts ``events`` of ``size`` bytes read back; whether the replays have
        fallen behind by more than a read-back may leave (ReadBackLag): a reader that
        does not keep up is closed then, the overflow dropping what was kept too."""
        lag = self.read_back_lag = self.read_back_lag or ReadBackLag()
        return lag.left_behind(events, size)

    def replay_page_sent(self, events: int, size: int) -> None:
        """A page of a replay went to its peer: it makes up for what was read back."""
        if self.read_back_lag is not None and self.read_back_lag.made_up(events, size):
            self.read_back_lag = None

    async def reserve(self) -> None:
        """Waits until one more request may be in flight, then counts it."""
        while self.in_flight >= self.max_in_flight and self.closing is None:
            if self._settled is None:
                self._settled = Wakeup()
            await self._settled.wait()
        self.in_flight += 1

    def settle(self) -> None:
        """A request of this connection got its reply."""
        self.in_flight -= 1
        if self._settled is not None:
            self._settled.set()

    def close(self, code: CloseCode, reason: str, *, replay_goes_on: bool = False) -> None:
        """Ends the stream: frames already queued are still sent, then the close; with
        ``replay_goes_on``, a replay under way or queued is sent whole first, within the
        close's bound (CloseRequest)."""
        if self.closing is None:
            self._end(CloseRequest(code, reason, replay_goes_on=replay_goes_on))

    def overflow(self) -> None:
        """The reader is too slow for its queue: the backlog is dropped, and the
        connection closed as soon as possible (4429: ``overflow_close``); it resumes
        from the log."""
        self.drop(*self.overflow_close)

    def drop(self, code: CloseCode, reason: str) -> None:
        """Ends the stream now: the backlog is dropped and the connection closed as soon
        as possible, not after what is queued (which could not follow in order); by
        the close already asked for, if there is one."""
        if self.closing is None:
            self.discard()
            self._end(CloseRequest(code, reason, overflow=True))
        else:
            self.cut_to_close()

    def cut_to_close(self) -> None:
        """Drops the events queued ahead of the close already asked for, and those left
        to be read back (server/read_back.py): behind a replay that stopped short, they
        would come after a gap. The other frames (the ``closed`` notice, an ``error``)
        and the close itself stay."""
        kept: list[OutboxItem] = []
        for item in self._items[self._head :]:
            if isinstance(item, EventOutbound):
                self.bytes -= item.event_size
                self.budget.used -= item.event_size
            elif not isinstance(item, Replay):
                kept.append(item)
        self._items, self._head = kept, 0

    def abandon(self, reason: str) -> None:
        """Its peer is gone, and nothing will be sent any more: closed (a closed outbox
        drops what is pushed) and emptied, so that it holds nothing of the budget in
        the moment before its actor takes it out of the room; and let go of its
        connection, which whatever still refers to it (an attach waiting in a stuck
        actor's inbox) would otherwise keep alive."""
        self._no_more_writers()
        self.close(CloseCode.GOING_AWAY, reason)
        self.discard()
        self.on_close = None
        self.sink = None
        self.flusher = None

    def discard(self) -> None:
        """Drops whatever is queued (the connection is gone, or too slow for it)."""
        self._items.clear()
        self._head = 0
        self.budget.used -= self.bytes
        self.bytes = 0

    def _end(self, closing: CloseRequest) -> None:
        self.closing = closing
        self._items.append(closing)
        # Through the flusher, like a frame: the frames queued ahead go without a task,
        # and the close too where the sink can send it at once (close_with).
        self._notify()
        if self._settled is not None:
            self._settled.set()
        if self._closing_wakeup is not None:
            self._closing_wakeup.set()
        if self.on_close is not None:
            self.on_close(closing)

    def close_with(self, frames: list[Outbound]) -> bool:
        """If the close is next, ``frames`` and the close frame go to the socket in one
        write, with no writer task, where the sink can end the connection at once (a
        stopping server: WebSocketSink.close_at_once); whether they went."""
        closing = self.closing
        if (
            closing is None
            or closing.overflow
            or closing.replay_goes_on
            or len(self) != 1  # the close is the last item: it is next once alone
            or self.sink is None
            or not self.sink.close_at_once(frames, closing.code, closing.reason)
        ):
            return False
        self._popleft()
        return True

    async def closing_within(self, delay: float) -> None:
        """Returns after ``delay`` seconds, or as soon as the outbox is closing: the
        writer's way to wait without holding up its close."""
        if self.closing is not None:
            return
        if self._closing_wakeup is None:
            self._closing_wakeup = Wakeup()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._closing_wakeup.wait()

    async def get(self) -> OutboxItem:
        """The next item, for the writer; from a replay taken until the next call, the
        outbox is ``replaying`` (it is ``replay_under_way``)."""
        self.replay_under_way = None
        await self._work_queued()
        item = self._popleft()
        self.replay_under_way = item if type(item) is Replay else None
        return item

    def get_nowait(self) -> OutboxItem | None:
        self.replay_under_way = None
        item = self._popleft() if len(self) else None
        self.replay_under_way = item if type(item) is Replay else None
        return item

    def take(self) -> OutboxItem | None:
        """The next item, for a writer run on demand; None when there is none, and the
        writer is to end (the next item that needs one starts another)."""
        item = self.get_nowait()
        if item is None:
            self._writer_ended()
        return item
