"""The account of HTTP answers written but not yet taken by their peers
(``UnreadAnswers``), which bounds what the server holds of them."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
from typing import TYPE_CHECKING

from websockets.http11 import Response

from .responses import error_response

if TYPE_CHECKING:
    from .http_wire import BambooConnection


# An answer this small is always sent: probes and error bodies stay served while big
# pages wait (a peer's connection costs more than that anyway).
SMALL_ANSWER_BYTES = 4096


class UnreadAnswers:
    """Bytes of HTTP answers written but not yet taken by their peers, against a limit.

    A plain HTTP answer waits in its connection's buffer until the peer reads it (the
    kernel takes what fits in the socket's own buffer), outside every queue the server
    bounds: 2,000 peers asking for a 1 MiB page and never reading held 2.3 GB. Each
    answer is charged here until its bytes have left that buffer: its connection
    releases them as the buffer drains, and at the latest when it is lost
    (:meth:`BambooConnection.hold_answer`). One that would go past the limit gets 503
    instead (the first always fits).

    A streamed answer's pieces wait for room instead (:meth:`room`), in turn: one that
    looked for room as soon as its last piece left took it back before any that had
    waited longer, and 200 peers reading as fast as they could were dropped as too
    slow, their room taken by others again and again."""

    __slots__ = ("_waiting", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # Pieces of streamed answers waiting for room, first come first charged.
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def full(self) -> bool:
        """Whether every answer but a small one would be refused now: then a request for
        a page is answered :meth:`busy` before its page is read, decoded and encoded."""
        return self.used >= self.limit

    def admit(self, connection: BambooConnection, response: Response) -> Response:
        size = len(response.body)
        if size <= SMALL_ANSWER_BYTES or connection.transport.is_closing():
            return response  # small, or to a peer already gone: nothing will be written
        if self.used and self.used + size > self.limit:
            return self.busy()
        self.used += size
        connection.hold_answer(self, size)
        return response

    @staticmethod
    def busy() -> Response:
        return error_response(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            "internal",
            "busy: answers not yet read by their peers fill the server's buffer; retry later",
            {"Retry-After": "1"},
        )

    def take(self, size: int) -> bool:
        """Charges ``size`` bytes of a streamed answer's next piece if they fit, as
        :meth:`admit` would admit an answer of that size; False (nothing charged) if
        not. The caller hands the charge to its connection (``hold_answer``)."""
        if self.used and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def charge(self, size: int) -> None:
        """Charges ``size`` bytes whether or not they fit: a piece read within room
        taken for it that came out larger (a page holds at least one message)."""
        self.used += size

    def room(self, size: int) -> asyncio.Future[None]:
        """A future done once ``size`` bytes are charged, after the pieces that waited
        before it (at once if none waits and they fit). The caller hands the charge to
        its connection, or gives it up with :meth:`give_up_room`."""
        future = asyncio.get_running_loop().create_future()
        if not self._waiting and self.take(size):
            future.set_result(None)
        else:
            self._waiting.append((size, future))
        return future

    def give_up_room(self, size: int, future: asyncio.Future[None]) -> None:
        """``future`` of :meth:`room` is not waited for any more: its charge goes back
        if it was made, else its place in the queue."""
        if future.done() and not future.cancelled():
            self.release(size)
            return
        future.cancel()
        with contextlib.suppress(ValueError):
            self._waiting.remove((size, future))
        self._charge_waiting()

    def release(self, size: int) -> None:
        self.used -= size
        self._charge_waiting()

    def _charge_waiting(self) -> None:
        waiting = self._waiting
        while waiting:
            size, future = waiting[0]
            if not future.done():
                if self.used and self.used + size > self.limit:
                    return
                self.used += size
                future.set_result(None)
            waiting.popleft()
