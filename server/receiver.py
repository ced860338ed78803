"""Receiver: a session's events for an in-process subscriber of the SessionManager
(the seed's ``connect_session`` channel), read from the subscriber's own outbox."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Callable

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import StoredEvent

from .outbound import EventOutbound, Outbound
from .outbox import CloseRequest, Outbox, Replay

ReplayPages = Callable[[int, int], AsyncIterator[list[Outbound]]]


class Receiver:
    """``async for`` or ``recv()``: :class:`StoredEvent` objects, replayed ones first,
    then live ones; iteration ends when the subscription is closed (session closed,
    evicted, or too slow to read)."""

    def __init__(self, outbox: Outbox, replay: ReplayPages) -> None:
        self.outbox = outbox
        self._replay = replay
        self._pending: collections.deque[StoredEvent] = collections.deque()
        self.close_code: CloseCode | None = None

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
            if self.close_code is not None:
                return None
            item = await self.outbox.get()
            if isinstance(item, CloseRequest):
                self.close_code = item.code
            elif isinstance(item, Replay):
                async for page in self._replay(item.after, item.through):
                    self._pending.extend(
                        out.stored_event() for out in page if isinstance(out, EventOutbound)
                    )
            elif isinstance(item, EventOutbound):
                self._pending.append(item.stored_event())
        return self._pending.popleft()
