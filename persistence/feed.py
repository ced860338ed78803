"""Live delivery from a store: a :class:`Feed` of the subscriptions by session, and
:class:`FeedSubscription`, the one implementation of the storage contract's
``Subscription`` that every backend hands out.

A backend calls :meth:`Feed.publish` with events once they are acknowledged (a local
store right after its commit; Redis from its pub/sub listener), and :meth:`Feed.end`
when a session is closed or deleted. A subscription buffers what is published, bounded
in events and in bytes; whatever it cannot take from its buffer in order (the start of
the subscription, a gap in what was published, a buffer that overflowed) it reads from
the store. So a subscriber always gets every event after its position exactly once, in
order, however late, lost or repeated the published copies are.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from bamboo_session.protocol.models import StoredEvent
from bamboo_session.wakeup import Wakeup

from .base import SessionNotFound

# (after_seq, limit) -> acknowledged events after after_seq, oldest first
ReadEvents = Callable[[int, int], Awaitable[list[StoredEvent]]]

BUFFER_EVENTS: Final = 1024
BUFFER_BYTES: Final = 1024 * 1024  # past it, a subscription reads from the store
# What a subscription's read from the store holds at most (but always one event), the
# same rule on every backend: its ``read`` asks for this budget beside the count.
# Without it a read behind an overflowed buffer brought up to ``limit`` events (the
# actor's 512) at once, whatever their size: 250 MB of 500 KB events, for each session
# whose viewers' process was behind its pub/sub (Redis), or whose actor was behind its
# own appends (a local store: one batch past the buffer). A backlog so comes in several
# reads: a server's stop delivers the rest before its close (server/control.py,
# deliver_known).
READ_BEHIND_BYTES: Final = BUFFER_BYTES

CLOSED: Final = "closed"
DELETED: Final = "deleted"
UNSUBSCRIBED: Final = "unsubscribed"
# The store lost history it had acknowledged, and changed the log's epoch (a Redis
# that may lose writes, restarted): the subscription's log is no more; resume.
HISTORY_LOST: Final = "history lost"
# The store holds none of the events it said it had after the subscription's position
# (a Redis that evicted the session's log under an ``allkeys-*`` maxmemory policy, or
# a log deleted by hand): they are lost, and the log cannot be followed without a gap.
EVENTS_LOST: Final = "events lost"


class FeedSubscription:
    """A session's events after ``position``, gap-free (see the storage contract)."""

    __slots__ = (
        "_buffer",
        "_buffered_bytes",
        "_callback",
        "_early",
        "_ending",
        "_feed",
        "_known_last",
        "_max_bytes",
        "_max_events",
        "_pending",
        "_position",
        "_read",
        "_wakeup",
        "ended",
        "epoch",
        "session_id",
    )

    def __init__(
        self,
        feed: Feed,
        session_id: str,
        after_seq: int,
        known_last: int,
        read: ReadEvents,
        max_events: int = BUFFER_EVENTS,
        max_bytes: int = BUFFER_BYTES,
    ) -> None:
        self._feed = feed
        self.session_id = session_id
        self._read = read
        self._position = after_seq
        self._known_last = known_last  # the newest seq known to be stored
        self._buffer: collections.deque[StoredEvent] = collections.deque()
        self._buffered_bytes = 0
        self._pending: collections.deque[StoredEvent] = collections.deque()  # for __anext__
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._wakeup = Wakeup()  # while next_batch() waits for something to deliver
        self._callback: Callable[[], object] | None = None
        self._ending: str | None = None  # closed: deliver what is stored, then end
        self.ended: str | None = None
        # The epoch of the session's log it follows, where the store tells (Redis: a
        # session replaced under the same id is another log, never this one's sequel).
        self.epoch: str | None = None
        # What came for an epoch before this one's was known (see set_epoch).
        self._early: list[tuple[str, list[StoredEvent] | None, str]] = []

    @property
    def position(self) -> int:
        return self._position

    @property
    def known_last(self) -> int:
        return self._known_last

    # -- the producer's side (the store) ----------------------------------------

    def set_epoch(self, epoch: str) -> None:
        """The epoch of the log it follows, once the store told: what was offered or
        ended for an epoch meanwhile (:meth:`Feed.publish` and :meth:`Feed.end` with
        one) is applied now if it was for this one, and dropped if not."""
        self.epoch = epoch
        early, self._early = self._early, []
        for of, events, reason in early:
            if of == epoch:
                if events is not None:
                    self.offer(events)
                else:
                    self.end(reason)

    def offer_of(self, epoch: str, events: list[StoredEvent]) -> None:
        """``offer`` if the events are of this one's log (kept until it is known)."""
        if self.epoch is None:
            if self.ended is None:
                self._early.append((epoch, events, ""))
        elif self.epoch == epoch:
            self.offer(events)

    def end_of(self, epoch: str, reason: str) -> None:
        """``end`` if it is this one's log that was closed or deleted."""
        if self.epoch is None:
            if self.ended is None:
                self._early.append((epoch, None, reason))
        elif self.epoch == epoch:
            self.end(reason)

    def offer(self, events: list[StoredEvent]) -> None:
        """Events acknowledged by the store, ascending; copies of ones already seen and
        gaps are fine (a gap is read from the store)."""
        if self.ended is not None:
            return
        buffer = self._buffer
        for event in events:
            seq = event.seq
            if seq > self._known_last:
                self._known_last = seq
            newest = buffer[-1].seq if buffer else self._position
            if seq <= newest:
                continue  # a copy of one already buffered or handed out
            if seq != newest + 1 or len(buffer) >= self._max_events:
                self._drop_buffer()  # the gap, or the overflow, is read from the store
                continue
            buffer.append(event)
            self._buffered_bytes += event.size
            if self._buffered_bytes > self._max_bytes:
                self._drop_buffer()
        self._wake()

    def stored_up_to(self, seq: int) -> None:
        """The store holds events up to ``seq``, learnt other than from an offer (a
        subscriber's start, a store's lost notifications): whatever of them is not
        buffered is read from the store."""
        if self.ended is None and seq > self._known_last:
            self._known_last = seq
            self._wake()

    def end(self, reason: str) -> None:
        """``closed``: what is stored is still delivered, then the iteration ends;
        anything else ends it now."""
        if self.ended is not None:
            return
        if reason == CLOSED:
            self._ending = reason
        else:
            self._finish(reason)
        self._wake()

    # -- the consumer's side ------------------------------------------------------

    def ready(self) -> bool:
        if self.ended is not None or self._position < self._known_last:
            return True
        return self._ending is not None

    def on_ready(self, callback: Callable[[], object] | None) -> None:
        self._callback = callback

    async def next_batch(self, limit: int = 512) -> list[StoredEvent]:
        if limit < 1:
            # Nothing asked, nothing taken: a read of none would find none, and end the
            # subscription as one whose store lost its events (_read_behind).
            return []
        while True:
            if self.ended is not None:
                return []
            if self._position < self._known_last:
                batch = self._take_buffered(limit) or await self._read_behind(limit)
                if batch:
                    self._position = batch[-1].seq
                    return batch
            elif self._ending is not None:
                self._finish(self._ending)
                return []
            else:
                await self._wakeup.wait()

    def take_buffered(self, limit: int = 512) -> list[StoredEvent]:
        # An ended subscription's buffer is dropped (_finish): nothing is at hand.
        batch = self._take_buffered(limit)
        if batch:
            self._position = batch[-1].seq
        return batch

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self

    async def __anext__(self) -> StoredEvent:
        pending = self._pending
        if not pending:
            pending.extend(await self.next_batch())
            if not pending:
                raise StopAsyncIteration
        return pending.popleft()

    def close(self) -> None:
        self._finish(UNSUBSCRIBED)
        self._wake()

    # -- internals ------------------------------------------------------------------

    def _take_buffered(self, limit: int) -> list[StoredEvent]:
        buffer = self._buffer
        while buffer and buffer[0].seq <= self._position:
            self._buffered_bytes -= buffer.popleft().size
        if not buffer or buffer[0].seq != self._position + 1:
            return []
        if len(buffer) <= limit:  # all of it, the usual case: no loop
            batch = list(buffer)
            buffer.clear()
            self._buffered_bytes = 0
            return batch
        batch = []
        taken = 0
        for _ in range(min(limit, len(buffer))):  # one pass, no comprehension's frame
            event = buffer.popleft()
            taken += event.size
            batch.append(event)
        self._buffered_bytes -= taken
        return batch

    async def _read_behind(self, limit: int) -> list[StoredEvent]:
        """Events after the position from the store, up to the buffer's start."""
        buffer = self._buffer
        if buffer:
            limit = min(limit, buffer[0].seq - self._position - 1)
        try:
            batch = await self._read(self._position, limit)
        except SessionNotFound:
            self._finish(DELETED)
            return []
        if self.ended is not None:
            return []
        fresh = [event for event in batch if event.seq > self._position]
        if not fresh:
            # None of those it said it had (an offer, a last seq read). Waiting for the
            # next offer left the reader waiting in next_batch as long as nothing more
            # was appended (a session's actor, and every request of its peers with
            # it); reading again would spin. It ends: its readers resume from the store.
            self._finish(EVENTS_LOST)
        return fresh

    def _drop_buffer(self) -> None:
        self._buffer.clear()
        self._buffered_bytes = 0

    def _finish(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self._drop_buffer()
            self._early = []
            self._feed.discard(self)

    def _wake(self) -> None:
        self._wakeup.set()
        if self._callback is not None and self.ready():
            self._callback()


class Feed:
    """Every live subscription of one store, by session id."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[FeedSubscription]] = {}

    def subscribe(
        self, session_id: str, after_seq: int, known_last: int, read: ReadEvents
    ) -> FeedSubscription:
        """A subscription registered before anything more is appended: call it with
        the session's last acknowledged seq, with no await in between."""
        subscription = FeedSubscription(self, session_id, after_seq, known_last, read)
        self._subscriptions.setdefault(session_id, set()).add(subscription)
        return subscription

    def has_subscribers(self, session_id: str) -> bool:
        return session_id in self._subscriptions

    def sessions(self) -> list[str]:
        return list(self._subscriptions)

    def publish(self, session_id: str, events: list[StoredEvent], epoch: str | None = None) -> None:
        """Offer the events to the session's subscriptions; with ``epoch``, only to
        those that follow the log of that epoch."""
        for subscription in list(self._subscriptions.get(session_id, ())):
            if epoch is None:
                subscription.offer(events)
            else:
                subscription.offer_of(epoch, events)

    def stored_up_to(self, session_id: str, seq: int) -> None:
        """Every subscription of the session: the store holds events up to ``seq``."""
        for subscription in list(self._subscriptions.get(session_id, ())):
            subscription.stored_up_to(seq)

    def end(self, session_id: str, reason: str, epoch: str | None = None) -> None:
        """End the session's subscriptions; with ``epoch``, only those that follow the
        log of that epoch (a session deleted and created again is another log)."""
        for subscription in list(self._subscriptions.get(session_id, ())):
            if epoch is None:
                subscription.end(reason)
            else:
                subscription.end_of(epoch, reason)

    def end_other_epochs(self, session_id: str, epoch: str, reason: str) -> None:
        """The session's subscriptions that follow a log of another epoch end."""
        for subscription in list(self._subscriptions.get(session_id, ())):
            if subscription.epoch is not None and subscription.epoch != epoch:
                subscription.end(reason)

    def end_all(self, reason: str = UNSUBSCRIBED) -> None:
        for session_id in list(self._subscriptions):
            self.end(session_id, reason)

    def discard(self, subscription: FeedSubscription) -> None:
        subscriptions = self._subscriptions.get(subscription.session_id)
        if subscriptions is not None:
            subscriptions.discard(subscription)
            if not subscriptions:
                del self._subscriptions[subscription.session_id]
