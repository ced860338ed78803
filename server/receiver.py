"""Receiver: a session's events for an in-process subscriber of the SessionManager
(the seed's ``connect_session`` channel), read from the subscriber's own outbox."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import structlog

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import StoredEvent

from .failures import failure_of
from .outbound import EventOutbound
from .outbox import CloseRequest, Outbox
from .pages import PageReads
from .read_back import Replay
from .replay import ReplayReads

log = structlog.get_logger("bamboo_session.receiver")


class Receiver:
    """``async for`` or ``recv()``: :class:`StoredEvent` objects, replayed ones first,
    then live ones; iteration ends when the subscription is closed (session closed,
    evicted, too slow to read, or a page of its replay not read from the store within
    the manager's ``store_read_timeout``: ``close_code`` says which)."""

    def __init__(self, outbox: Outbox, replay: ReplayReads, reads: PageReads) -> None:
        self.outbox = outbox
        self._replay = replay
        self._reads = reads
        # The replay under way: the seq after which the next page starts (its ``after``,
        # moved on page by page), and its end (its ``through``, which live events that
        # would overflow the queue behind it move on while its pages keep up with them:
        # Outbox.push; a caller that stops reading is closed with 4429 all the same).
        self._missed: Replay | None = None
        self._pending: collections.deque[StoredEvent] = collections.deque()
        self.close_code: CloseCode | None = None
        self.close_reason: str | None = None

    @property
    def connection_id(self) -> str:
        return self.outbox.connection_id

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self

    async def __anext__(self) -> StoredEvent:
        event = await self.recv()
        if event is None:
            raise StopAsyncIteration
        return event

    async def recv(self) -> StoredEvent | None:
        """The next event, or None once the subscription has ended. A caller that stops
        waiting (a timeout of its own) loses nothing: the next call goes on."""
        while not self._pending:
            missed = self._missed
            if missed is not None and missed.after < missed.through:
                await self._next_page(missed)
                continue
            if self.close_code is not None:
                return None
            item = await self.outbox.get()
            if isinstance(item, CloseRequest):
                self.close_code, self.close_reason = item.code, item.reason
            elif isinstance(item, Replay):
                self._missed = item
            elif isinstance(item, EventOutbound):
                self._pending.append(item.stored_event())
        return self._pending.popleft()

    async def _next_page(self, missed: Replay) -> None:
        """The next page of the missed events, once the last one was handed out: one
        page at a time in memory (a slot and a deadline each, as for a WebSocket's
        replay). A page the store does not give ends the subscription as it closes a
        WebSocket (1011), and what was queued behind the replay goes with it: live
        events cannot follow a gap. The pages read before it were handed out."""
        try:
            page = await self._replay.page(missed.after, missed.through, self._reads)
        except StorageError as exc:
            log.warning("replay failed", error=str(exc))
            failure = failure_of(exc)
            self._missed = None
            self.outbox.drop(failure.close, failure.reason)  # no live event after this
            self.outbox.discard()  # nor any queued already, should it have been closing
            self.close_code, self.close_reason = failure.close, failure.reason
            return
        if page:
            missed.after = page[-1].seq
        else:
            self._missed = None
        events = [out for out in page if isinstance(out, EventOutbound)]
        # Asked for once the last page was handed out: progress, which lets the live
        # events behind the replay be read back (Outbox.push) while its caller keeps up.
        self.outbox.replay_page_sent(len(events), sum(out.event_size for out in events))
        self._pending.extend(out.stored_event() for out in events)
