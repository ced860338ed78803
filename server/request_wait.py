"""The wait for an upgrade's request on the server's connection (http_wire.py
``BambooConnection``): :class:`RequestWait`, which wakes the handshake once the request
is read or the connection lost, answers a head not whole in time (408), and keeps of
the request, once upgraded, only what the ``hello`` needs.
"""

from __future__ import annotations

import asyncio
import http

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import CONNECTING

from .http_refusals import may_begin_request_line
from .http_requests import json_reject

# The first bytes of a head kept while it is read, enough for a request line's method
# behind RFC 9112 2.2's empty lines (8 CRLFs at most): what a late head is judged by,
# with whether its first line has ended.
HEAD_START_BYTES = 32
LATE_HEAD = "the request head did not arrive whole in time (10 s): send it at once"


class RequestWait(ServerConnection):
    """websockets' server connection, whose handshake awaits one future of its own for
    the request or the loss (websockets awaited two, with asyncio.wait)."""

    # What the handshake awaits while neither the request nor the loss has come.
    _handshake_waiter: asyncio.Future[None] | None = None
    _eof_held = False  # the peer's end of stream, come before its request was answered
    _head_start = b""  # the first bytes of the request's head (HEAD_START_BYTES at most)
    _line_ended = False  # a line end came past them: the first line is whole

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
        # Whole, or never to be: a head's first bytes are judged no more, and are not
        # kept for the connection's life (some 70 bytes an idle WebSocket).
        vars(self).pop("_head_start", None)
        vars(self).pop("_line_ended", None)
        if self.request is not None and not self._eof_held:
            # One turn of the loop reads what came with the request, as websockets'
            # wait on two futures gave it: an end of stream in the request's segment is
            # known before the answer, with frames behind the request or without them
            # (docs/protocol.md: an upgrade sent with its end of stream ends after its
            # 101, no handler run, no frame sent with it acted on).
            await asyncio.sleep(0)

    def note_head(self, data: bytes) -> None:
        """``data`` read while the request is awaited: its head's first bytes kept, and
        whether a line ended past them (the empty lines that may come first are
        within them)."""
        if self.request is not None or self._line_ended:
            return
        left = HEAD_START_BYTES - len(self._head_start)
        if left > 0:
            self._head_start += data[:left]
            self._line_ended = data.find(b"\n", left) >= 0
        else:
            self._line_ended = b"\n" in data

    def answer_late_head(self) -> bool:
        """408 ``Request Timeout`` to a peer that sent part of a head, and not the rest, in
        time (the handshake's deadline came first), and the server's end of stream
        behind it; the connection is closed then, once they are written, without the
        wait for the peer's close that other refusals get (up to the close timeout): a
        peer that did not send its head in time is given no more. Nothing, if nothing
        was sent but empty lines (a browser's connection opened ahead of a request,
        which would take an answer it did not ask for as the answer to its next), if
        what was sent is no HTTP, if the connection is gone, or if anything was written
        on it already (a refusal as the head was read: nothing half-written is added to).
        Whether it was sent."""
        protocol = self.protocol
        start = self._head_start.lstrip(b"\r\n")
        if (
            self.request is not None
            or protocol.state is not CONNECTING
            or protocol.eof_sent
            or self.transport.is_closing()
            or not (self._first_line_whole(start) or may_begin_request_line(start))
        ):
            return False
        response = json_reject(http.HTTPStatus.REQUEST_TIMEOUT, LATE_HEAD)
        if start.startswith(b"HEAD "):
            response.body = b""  # its status and headers only (RFC 9110 9.3.2)
        protocol.send_response(response)
        self.send_data()
        self.transport.close()
        return True

    def _first_line_whole(self, start: bytes) -> bool:
        """Whether the head's first line has ended (``start``: its first bytes, the
        empty lines before it left out). Not refused as it came (this is asked only of
        a connection that has written nothing), it was read as a request line, whatever
        its method: ``PROPFIND`` or ``get`` in time are answered 405, so late, 408. One
        that is no HTTP was closed as it came (http_requests.py ``_refusal``)."""
        return self._line_ended or b"\n" in start

    def _pass_on_eof(self) -> None:
        """The peer's end of stream, held while its request was answered, goes to
        websockets now that the answer is sent (or the upgrade done), and the
        connection closes once what it holds is written, as on any end of stream."""
        if not self._eof_held:
            return
        self._eof_held = False
        super().eof_received()
        self.transport.close()

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
