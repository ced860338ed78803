"""DeleteHolds: the sessions a delete holds off in this process (ActorRegistry.held_off)
until the store's outcome is known, the connections handed over meanwhile, and the
bounded wait of whoever meets a hold: an attach, an in-process append or close, an HTTP
read of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bamboo_session.protocol.errors import CloseCode

from .failures import ServerStopping
from .pages import PageReads
from .room import HeldConnections


class DeleteHolds:
    def __init__(self, reads: PageReads) -> None:
        # A wait for a hold is a wait for the store's delete: as bounded as a read.
        self._reads = reads
        self._released: dict[str, asyncio.Future[None]] = {}
        # Their connections, open and in no room meanwhile: a stop tells them first.
        self.held: dict[str, HeldConnections] = {}
        self.closed = False
        self._closing: asyncio.Future[None] | None = None  # set by close(), for waiters

    def holds(self, session_id: str) -> bool:
        return session_id in self._released

    async def unheld(self, session_id: str, deadline: float | None = None) -> None:
        """Returns once no delete holds the session off: the store then holds what it
        will, the session or not. StoreTimeout past ``deadline`` (default: the read
        deadline from now), a store whose delete does not answer; ServerStopping once
        the holds close: a stop waits for no store's delete, nor for anyone waiting
        for one."""
        if not self.holds(session_id):
            return
        until = self._reads.deadline() if deadline is None else deadline
        await self._reads.within(until, self._unheld(session_id))

    async def _unheld(self, session_id: str) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        while (released := self._released.get(session_id)) is not None and not self.closed:
            await asyncio.wait([released, self._closing], return_when=asyncio.FIRST_COMPLETED)
        if self.closed:
            raise ServerStopping("server is shutting down")

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str) -> AsyncIterator[HeldConnections]:
        """The session held off while the block runs, after any earlier hold of it
        (another delete: this one comes after). A block that ends without telling the
        connections handed over (cancelled before it knew) tells them 1011 ``session
        not deleted``: they resume, and find what is there."""
        while (earlier := self._released.get(session_id)) is not None:
            await asyncio.wait([earlier])
        self._released[session_id] = released = asyncio.get_running_loop().create_future()
        self.held[session_id] = held = HeldConnections()
        try:
            yield held
        finally:
            del self._released[session_id], self.held[session_id]
            released.set_result(None)
            held.tell(CloseCode.INTERNAL_ERROR, "session not deleted")

    def close(self, code: CloseCode, reason: str) -> None:
        """Ends every wait for a hold (ServerStopping) and tells the connections held
        ``code``: a delete's outcome, known later, comes too late."""
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        for held in self.held.values():
            held.tell(code, reason)
