"""The server's connection on the WebSocket port: :class:`BambooConnection`, the
``create_connection`` of ``serve()``.

It gives its websockets protocol the JSON refusals and the request parser of
http_requests.py, charges what a peer sends before its request is answered to the
account of unanswered requests (and drops a peer that sends more than 64 KiB behind its
request), keeps of an upgrade's request only what the ``hello`` needs (request_wait.py,
with the wait for the request), and reads its socket only while it can be written to.
An answer whose body is streamed (``StreamedResponse``) has its head sent by websockets,
and its body written after it (http_stream.py), outside websockets' open timeout,
which bounds the rest here as it did; what an answer holds while its peer has not
taken it is the answering side's (http_answer.py ``AnsweringConnection``, which this
connection is). Once upgraded, what it reads goes to websockets' parser a few KiB at a
time, each frame charged to the connection's byte rate (limits.py); in debt, or with
websockets' incoming queue full, it stops reading until the debt is repaid or the
handler took a frame (sliced_reads.py); a message still arriving is charged to its share
of the memory budget, and held to a floor of rate (arriving_frames.py). A peer's end of
stream that comes once its request is read waits for the answer (a client may half-close
after its request, RFC 9112 9.6): websockets, fed it at once, answered nothing. How it
ends on the wire (our close frame out, the peer's input dropped in a stop) is
wire_end.py's.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from websockets.asyncio.connection import Connection
from websockets.datastructures import Headers
from websockets.frames import DATA_OPCODES, Frame
from websockets.http11 import Request
from websockets.protocol import CONNECTING, State
from websockets.server import ServerProtocol

from bamboo_session.protocol.parsed_frames import PARSER_KEEPS_BYTES, handed_on

from .answer_heads import AnswerHeadsProtocol
from .arriving_frames import ArrivingFrames, ChargedArrivals
from .deadlines import Deadline
from .http import Route
from .http_answer import AnsweringConnection
from .http_requests import UnansweredRequests, parse_request, upgrade_reject
from .limits import FRAME_BYTES, ByteRate
from .read_waits import ReadWaits
from .request_wait import RequestWait
from .subprotocols import check_extension_offer
from .upgrade_task import ProcessRequest, answer
from .wire_end import WireEnd

# Bytes a peer may send before its request is answered: an upgrade's first frames, or a
# stray CRLF, fit many times over (RFC 6455 has clients wait for the answer anyway).
EARLY_BYTES = 64 * 1024
# websockets' open_timeout, applied here (serve() gets None): within it a request is
# read and answered, but for a streamed answer's body, which has its own timeouts.
OPEN_TIMEOUT = 10.0
# websockets' own steps of every frame read, called by name, not by super() (a super
# object and a walk of the bases, some 1,200 machine instructions each, per frame): its
# handling of a frame (queued if data, a Pong matched to its Ping), which its
# ServerConnection's process_event passes every frame on to, and its send_data. No base
# of BambooConnection overrides either (tests/test_connection_by_name_calls.py fails if
# one does: its override would be skipped).
_websockets_frame_event = Connection.process_event
_websockets_send_data = Connection.send_data


class BambooConnection(WireEnd, ChargedArrivals, AnsweringConnection, RequestWait):
    """websockets' server connection, with our answers to bad requests, and a socket
    read only while it can be written to: websockets answers a peer's pings itself,
    straight into the socket's buffer, outside every queue the server bounds, so a peer
    that pings without reading the pongs would grow that buffer without end. The
    keepalive's close ends within the close timeout (close_bound.py)."""

    # The account of bytes read before the answer (http_requests.py), and this
    # connection's charge to it.
    _pending: UnansweredRequests | None = None
    _request_held = 0
    # Set once attached to a session: its outbox sends ``closed`` and the close.
    closes_itself = False
    # The upgrade's route, parsed once as its request is checked (request_gate.py), for the
    # handler: the path is not parsed again.
    route: Route | None = None
    # The deadline of the answer under way, made or streamed (run_handshake).
    _answering: Deadline | None = None

    def __init__(
        self,
        protocol: ServerProtocol,
        *args: Any,
        open_connections: set[BambooConnection] | None = None,
        max_connections: int = 0,
        on_over_limit: Callable[[], None] | None = None,
        on_late_head: Callable[[], None] | None = None,
        read_rate: tuple[float, float] = (0.0, 1.0),
        on_read_wait: Callable[[float], None] | None = None,
        unanswered_requests: UnansweredRequests | None = None,
        max_queue_bytes: int | None = None,
        arriving_frames: ArrivingFrames | None = None,
        **kwargs: Any,
    ) -> None:
        # Whole data frames read without websockets' generator parser (whole_frames.py),
        # an empty subprotocol offer read as none (subprotocols.py), every head with
        # the server's headers (answer_heads.py): the class's methods, no object more
        # on the connection.
        protocol.__class__ = AnswerHeadsProtocol
        protocol.reject = upgrade_reject(protocol)  # type: ignore[method-assign,assignment]
        check_extension_offer(protocol)
        protocol.parser = parse_request(protocol)
        next(protocol.parser)
        super().__init__(protocol, *args, **kwargs)
        # The server's account of every connection from accept to end (websockets
        # counts only the upgraded ones): what a stop waits for (shutdown.py).
        self._open_connections = open_connections
        self._max_connections = max_connections  # of open_connections; 0: no cap
        self._on_over_limit = on_over_limit
        self._on_late_head = on_late_head  # counts a 408 (bamboo_http_requests_timed_out)
        self._meter = ByteRate(*read_rate) if read_rate[0] > 0 else None
        self.read_waits = ReadWaits(self.loop, on_read_wait)  # for the byte rate's debt
        self._pending = unanswered_requests
        self.max_queue_bytes = max_queue_bytes  # of frames read and not handled yet
        self.arrivals = arriving_frames  # the share of messages still arriving

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        # websockets' constant, not State.CONNECTING: a member read off its Enum class
        # goes through EnumType.__getattr__ on Python 3.11, and every read comes here;
        # the field behind websockets' ``state`` property, a call less (as flush.py).
        if self.protocol._state is not CONNECTING:
            self.bytes_read += len(data)
            self._parse_sliced(data)
            return
        if (
            self.protocol.state is State.CONNECTING
            and not self.protocol.eof_sent
            and not self._hold_request(len(data))
        ):
            # Requests not answered yet hold their share of the memory budget. Once
            # answered or refused (its end of stream sent), what the peer sends is
            # discarded unread: it holds nothing, and is not charged.
            self.transport.abort()
            return
        self.note_head(data)  # a head late in whole is answered 408 if it began as HTTP
        super().data_received(data)
        if self.request is not None:
            self._wake_handshake()
        if (
            self.protocol.state is State.CONNECTING
            and len(self.protocol.reader.buffer) > EARLY_BYTES
        ):
            # Bytes behind a request wait for its answer (http_requests.parse_request):
            # a peer that sends this much before it is answered is no WebSocket client.
            self.transport.abort()

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame):
            if not event.fin or self._fragments:
                self.count_fragment(event)  # a message in fragments (arriving_frames.py)
            size = len(event.data)
            if self._meter is not None:
                self._debt = self._meter.charge(size + FRAME_BYTES)
            if size > PARSER_KEEPS_BYTES:
                event = handed_on(event)  # not kept by the parser till the next frame
            if self._close_sent and event.opcode in DATA_OPCODES:
                return  # nothing can answer it now (RFC 6455 5.5.1): not queued
            _websockets_frame_event(self, event)
            return
        super().process_event(event)  # the upgrade's request

    def _hold_request(self, size: int) -> bool:
        pending = self._pending
        if pending is None:
            return True
        if not pending.take(self, size):
            return False
        self._request_held += size
        return True

    def _release_request(self) -> None:
        if self._pending is not None and self._request_held:
            self._pending.give_back(self, self._request_held)
        self._request_held = 0

    def evict(self) -> None:
        """Dropped to make room in the unanswered-requests share (UnansweredRequests.take):
        its request has been arriving, or waiting for its answer, longest."""
        self._release_request()
        self.transport.abort()

    def send_data(self) -> None:
        _websockets_send_data(self)
        protocol = self.protocol
        if protocol.close_sent is None and not protocol.eof_sent:
            return  # open both ways (every frame read comes here): nothing below applies
        if self.protocol.close_sent is not None:
            self.close_frame_out()
        if self.protocol.close_sent is not None and not self._close_sent and self._closing_first():
            self.await_close_reply()
        if self.protocol.eof_sent:
            if self._request_held:
                self._answered()
            self._pass_on_eof()

    def _answered(self) -> None:
        """The request is answered or refused, its end of stream sent: websockets drops
        what it held of it (its parser discards from here on), and this connection
        keeps of the request only its path, so its charge goes now, not when the peer
        hangs up (up to the close timeout; after a refusal, the open timeout). The
        answer's body goes too: its bytes are in the transport's buffer by now, counted
        there (UnreadAnswers), and websockets' handshake keeps the answer itself until
        the peer hangs up (120 peers that read a 900 KB page and stayed held 105 MiB)."""
        self._release_request()
        request = self.request
        if request is not None:
            self.request = Request(request.path, Headers())
        if self.response is not None:
            self.response.body = b""

    async def run_handshake(self, process_request: ProcessRequest) -> None:
        """The request read and answered (upgrade_task.answer, websockets' handshake)
        within OPEN_TIMEOUT; a streamed answer's body after it; frames that came with
        an upgrade read."""
        # A plain answer not taken by then is dropped with the connection: its pace
        # is measured against it (AnsweringConnection.behind_pace).
        self.answer_deadline = self.loop.time() + OPEN_TIMEOUT
        # Brought forward if the connection is lost meanwhile (connection_lost): a
        # page read or a listing made for a peer gone is work for nobody, and a storm
        # of peers that reset once they have asked held /healthz for seconds (h419).
        self._answering = Deadline(self.loop, self.answer_deadline)
        try:
            async with self._answering:
                await answer(self, process_request)
        except BaseException as exc:
            if self._stream is not None:
                # Its first piece's charge, and the piece, which its generator holds
                # until closed (past the connection's loss, until the collector runs).
                await self._stream.discard()
            # 408 to a head begun and not ended, counted.
            if isinstance(exc, TimeoutError) and self.answer_late_head() and self._on_late_head:
                self._on_late_head()
            raise
        finally:
            self._answering = None
            self._release_request()
        if self._stream is not None:
            if self._head_sent and not self.transport.is_closing():
                # Given up as its making is, if the connection is lost meanwhile: a page
                # read for a peer gone held a slot until the store answered. No deadline
                # of its own: the stream bounds each of its waits (its page timeout).
                self._answering = Deadline(self.loop, math.inf)
                try:
                    async with self._answering:
                        await self._stream.run()
                finally:
                    self._answering = None
            else:
                await self._stream.discard()
            return
        if self.connection_lost_waiter.done():
            # An answer made for a peer gone meanwhile (one that reset while its page
            # was read) is not kept: the connection outlives its loss until the
            # collector finds its cycles (transport, protocol, the error it was lost
            # with), which a server runs rarely (process_setup.py), and each such
            # answer held its page there: 500 resets after asking for a page of
            # 700 KB added some 300 MB, outside every bound (h419).
            self.response = None
            return
        if self.protocol.state is State.OPEN:
            self._forget_headers()
            # Frames sent along with the request (up to EARLY_BYTES, in websockets'
            # buffer) are read now, sliced as any read: parsed at once, 64 KiB of
            # deflated frames would be 64 MiB queued.
            early = bytes(self.protocol.reader.buffer)
            del self.protocol.reader.buffer[:]
            self.data_received(early)
            # An upgrade whose peer ended its stream with the request: closed at once,
            # as one that ends it right after the upgrade (1006, no handler).
            self._pass_on_eof()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        self.peer_ended()
        protocol = self.protocol
        answering = protocol.state is State.CONNECTING and not protocol.eof_sent
        if self.request is not None and answering:
            # A client may shut down its sending side once its request is sent (RFC
            # 9112 9.6), and still reads the answer. Fed to websockets now, the end of
            # stream would end its wait for the answer, which would never be sent: it
            # waits until the answer's own end of stream is sent, or the upgrade done
            # (_pass_on_eof). Bounded as the answer is (OPEN_TIMEOUT, a streamed
            # answer's page timeout); a streamed answer that comes to wait for its
            # peer's debt ends there, its peer taken for gone (http_pages.py).
            self._eof_held = True
            return True
        if self._discarding:
            # A stopping server parses nothing more: the transport closes once its
            # buffer is written, as websockets has it close on any end of stream. Kept
            # open, with nothing read from it, it was never seen to end: a peer that
            # hung up as the stop began, reset by the close frame written to it, was
            # owed that frame until the grace ran out.
            return None
        super().eof_received()
        return None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._open_connections is not None:
            if 0 < self._max_connections <= len(self._open_connections):
                # Closed before anything is read: an answer would have to wait for the
                # request, holding the descriptor the cap is there to keep for the
                # store (limits.connection_cap). Its handler ends with the transport.
                if self._on_over_limit is not None:
                    self._on_over_limit()
                self.transport.abort()
                return
            self._open_connections.add(self)
        # websockets pauses reading while its incoming queue is full; resume only when
        # writing is not paused too (and the other way round, below).
        self.recv_messages.resume = self._resume_reading

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answering is not None:
            self._answering.expire()
        self._stop_holding()
        try:
            super().connection_lost(exc)
        finally:
            self._wake_handshake()
            self._release_request()
            if self._open_connections is not None:
                self._open_connections.discard(self)

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self._discarding:  # nothing read is answered any more
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()  # the answer's charge follows what left (http_answer.py)
        self._resume_reading()
