"""The wait for an upgrade's request on the server's connection (http_wire.py
``BambooConnection``): :class:`RequestWait`, which wakes the handshake once the request
is read or the connection lost, and keeps of the request, once upgraded, only what the
``hello`` needs.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request


class RequestWait(ServerConnection):
    """websockets' server connection, whose handshake awaits one future of its own for
    the request or the loss (websockets awaited two, with asyncio.wait)."""

    # What the handshake awaits while neither the request nor the loss has come.
    _handshake_waiter: asyncio.Future[None] | None = None
    _eof_held = False  # the peer's end of stream, come before its request was answered

    async def request_or_loss(self) -> None:
        """Returns once the request is read or the connection lost: websockets'
        handshake awaited both futures with asyncio.wait; here one future, woken by
        whichever comes first (_wake_handshake), and made only if it must be waited."""
        if self.request is None and not self.connection_lost_waiter.done():
            waiter = self._handshake_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._handshake_waiter = None
        if self.request is not None and not self._eof_held:
            # One turn of the loop reads what came with the request, as websockets'
            # wait on two futures gave it: an end of stream in the request's segment is
            # known before the answer, with frames behind the request or without them
            # (docs/protocol.md: an upgrade sent with its end of stream ends after its
            # 101, no handler run, no frame sent with it acted on).
            await asyncio.sleep(0)

    def _wake_handshake(self) -> None:
        waiter = self._handshake_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _forget_headers(self) -> None:
        """Keeps of the upgrade's request its path and the one header the ``hello`` may
        still need (``Authorization``, server/handshake.py), and drops the answer: the
        rest would stay with the connection, uncharged, while its ``hello`` is awaited."""
        request = self.request
        if request is None:
            return
        headers = Headers()
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            headers["Authorization"] = authorization
        self.request = Request(request.path, headers)
        self.response = None
