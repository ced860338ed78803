"""DeleteHolds: the sessions a delete holds off in this process (ActorRegistry.held_off)
until the store's delete has ended, the connections handed over meanwhile, and the
bounded wait of whoever meets a hold: an attach, an in-process append, create, read,
close or delete, an HTTP read of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Final

import structlog

from bamboo_session.persistence.base import SessionNotFound
from bamboo_session.protocol.errors import CloseCode

from .failures import ServerStopping
from .pages import PageReads, StoreTimeout
from .room import HeldConnections

NOT_DELETED = "session not deleted"
# Store deletes that outlived their caller's deadline and still run: past these, the
# store answers none of them, and another would only pile up behind (a stalled disk
# never ends one). A hold is a few objects of fixed size: the count bounds its bytes.
OUTLIVED_DELETES_MAX: Final = 64

log = structlog.get_logger("bamboo_session.manager")


class Hold:
    """One delete's hold of a session: the connections its actor handed over, and the
    store's delete, which the hold lasts for even once its caller has left."""

    __slots__ = ("_telling", "call", "connections", "released")

    def __init__(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        self.connections = HeldConnections()
        self.released: asyncio.Future[None] = loop.create_future()
        self.call: asyncio.Task[None] | None = None
        # The connections wait for the outcome no longer than the delete's caller does:
        # then 1011, they resume, and their hellos wait (bounded) for the outcome.
        self._telling = loop.call_at(
            deadline, self.connections.tell, CloseCode.INTERNAL_ERROR, NOT_DELETED
        )

    def lasts_for(self, call: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """``call`` (the store's delete) run in a task the hold lasts for: the store
        holds what it will, the session or not, only once it has ended."""
        self.call = asyncio.ensure_future(call)
        return self.call

    def release(self) -> None:
        self._telling.cancel()
        self.released.set_result(None)
        # Not told by the call's outcome: it failed, or never started.
        self.connections.tell(CloseCode.INTERNAL_ERROR, NOT_DELETED)
        if self.call is not None and not self.call.cancelled():
            self.call.exception()  # its caller may have left: nobody else retrieves it


class DeleteHolds:
    def __init__(self, reads: PageReads) -> None:
        # A wait for a hold is a wait for the store's delete: as bounded as a read.
        self._reads = reads
        # One hold per session at most: a delete meeting one waits for it (bounded)
        # instead of adding another, so a store whose deletes never end keeps one per
        # session deleted meanwhile (a future, a timer handle, and a task the store
        # holds anyway), OUTLIVED_DELETES_MAX once their callers have gone, and no
        # connection: they are told 1011 by the deadline and let go.
        self.holding: dict[str, Hold] = {}
        self.outlived = 0  # holds whose store delete still runs, its caller gone
        self.closed = False
        self._closing: asyncio.Future[None] | None = None  # set by close(), for waiters

    def holds(self, session_id: str) -> bool:
        return session_id in self.holding

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
        while (hold := self.holding.get(session_id)) is not None and not self.closed:
            await asyncio.wait([hold.released, self._closing], return_when=asyncio.FIRST_COMPLETED)
        if self.closed:
            raise ServerStopping("server is shutting down")

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, deadline: float) -> AsyncIterator[Hold]:
        """The session held off while the block runs, and after it until the store
        call it ran (:meth:`Hold.lasts_for`) has ended; after any earlier hold of it
        (another delete: this one comes after), within ``deadline`` (StoreTimeout).
        Its connections are told 1011 ``session not deleted`` by ``deadline`` unless
        told its outcome before: they resume, and find what is there. StoreTimeout at
        once, nothing held, while OUTLIVED_DELETES_MAX store deletes outlive theirs."""
        while self.holds(session_id):
            await self.unheld(session_id, deadline)
        if self.outlived >= OUTLIVED_DELETES_MAX:
            raise StoreTimeout(f"the store has not answered {self.outlived} deletes")
        self.holding[session_id] = hold = Hold(deadline)
        try:
            yield hold
        finally:
            if hold.call is None or hold.call.done():
                self._release(session_id, hold)
            else:
                self.outlived += 1
                hold.call.add_done_callback(lambda _call: self._released_late(session_id, hold))

    def _released_late(self, session_id: str, hold: Hold) -> None:
        self.outlived -= 1
        self._release(session_id, hold)
        # Its caller got StoreTimeout (or left): the outcome is known to the log alone.
        log.warning(
            "a delete ended after its caller gave up on it",
            session_id=session_id,
            outcome=_outcome(hold.call),
        )

    def _release(self, session_id: str, hold: Hold) -> None:
        del self.holding[session_id]
        hold.release()

    def close(self, code: CloseCode, reason: str) -> None:
        """Ends every wait for a hold (ServerStopping) and tells the connections held
        ``code``: a delete's outcome, known later, comes too late."""
        self.closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        for hold in self.holding.values():
            hold.connections.tell(code, reason)


def _outcome(call: asyncio.Task[None] | None) -> str:
    if call is None or call.cancelled():
        return "cancelled"
    failure = call.exception()
    if failure is None:
        return "deleted"
    if isinstance(failure, SessionNotFound):
        return "not found"
    return f"not deleted: {failure}"
