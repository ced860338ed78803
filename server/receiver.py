"""Receiver: a session's events for an in-process subscriber of the SessionManager
(the seed's ``connect_session`` channel), read from the subscriber's own outbox."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable

import structlog

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import StoredEvent

from .failures import failure_of
from .outbound import EventOutbound, Outbound
from .outbox import CloseRequest, Outbox, Replay
from .pages import PageReads

log = structlog.get_logger("bamboo_session.receiver")

ReplayPages = Callable[[int, int, PageReads], AsyncIterator[list[Outbound]]]


class Receiver:
    """``async for`` or ``recv()``: :class:`StoredEvent` objects, replayed ones first,
    then live ones; iteration ends when the subscription is closed (session closed,
    evicted, too slow to read, or a page of its replay not read from the store within
    the manager's ``store_read_timeout``: ``close_code`` says which)."""

    def __init__(self, outbox: Outbox, replay: ReplayPages, reads: PageReads) -> None:
        self.outbox = outbox
        self._replay = replay
        self._reads = reads
        self._pages: AsyncIterator[list[Outbound]] | None = None  # a replay under way
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
        """The next event, or None once the subscription has ended."""
        while not self._pending:
            if self._pages is not None:
                await self._next_page(self._pages)
                continue
            if self.close_code is not None:
                return None
            item = await self.outbox.get()
            if isinstance(item, CloseRequest):
                self.close_code, self.close_reason = item.code, item.reason
            elif isinstance(item, Replay):
                self._pages = self._replay(item.after, item.through, self._reads)
            elif isinstance(item, EventOutbound):
                self._pending.append(item.stored_event())
        return self._pending.popleft()

    async def _next_page(self, pages: AsyncIterator[list[Outbound]]) -> None:
        """The next page of the missed events, once the last one was received: one page
        at a time in memory (a slot and a deadline each, as for a WebSocket's replay).
        A page the store does not give ends the subscription as it closes a WebSocket
        (1011): live events cannot follow a gap. The pages read before it were
        received."""
        try:
            page = await anext(pages)
        except StopAsyncIteration:
            self._pages = None
            return
        except StorageError as exc:
            self._pages = None
            log.warning("replay failed", error=str(exc))
            failure = failure_of(exc)
            self.outbox.drop(failure.close, failure.reason)
            return
        self._pending.extend(out.stored_event() for out in page if isinstance(out, EventOutbound))
