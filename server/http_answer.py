"""The answering side of the server's connection (http_wire.py ``BambooConnection``):
what an HTTP answer holds of the account of answers not yet taken by their peers
(unread_answers.py) while it waits in the transport's buffer, the body of a streamed
answer written after its head (http_stream.py), and how the connection gives up its
answer when room is made for another peer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Response

from .http_stream import AnswerStream
from .replay import kernel_queue

if TYPE_CHECKING:
    from .responses import StreamedResponse
    from .unread_answers import AnswerShare

# The kernel's send buffer of a connection that answers an HTTP request (the kernel
# doubles it): what it holds of an unread answer is not counted (hold_answer).
ANSWER_SEND_BUFFER = 64 * 1024
# Seconds an answer's peer is given before its pace is looked at (behind_pace): its
# first bytes reach it a round trip after they are written, and TCP's slow start
# doubles what is in flight each round trip from 10 segments, so that a peer 300 ms
# away has acknowledged some 100 kB by then however fast it reads (the pace of a page
# of 1 MiB in 10 s).
PACE_GRACE = 1.0


class AnsweringConnection(ServerConnection):
    """websockets' server connection, whose plain HTTP answer is charged to its peer's
    share of the unread answers until its bytes have left the transport's buffer."""

    # The account of a big HTTP answer (responses.py) and how much of it is still
    # charged there; class defaults, so that a WebSocket connection carries neither.
    _answers: AnswerShare | None = None
    _answer_held = 0
    # The share this connection is among the holders of (AnswerShare.hold), from its
    # answer's first charge until the answer is taken or the connection lost.
    _holder_of: AnswerShare | None = None
    # The answer (a streamed answer's piece) charged last: when it was written, its
    # bytes, and the time its peer has to take it before the connection is dropped
    # anyway; its pace is measured against them (behind_pace).
    _answer_since = 0.0
    _answer_bytes = 0
    _answer_time = 0.0
    # Bytes the kernel's queue held, not yet acknowledged, when it was written: the
    # previous page's tail, which the peer takes before any byte of this one.
    _answer_ahead = 0
    # When a plain answer's connection is dropped, taken or not: the handshake's end
    # (http_wire.py OPEN_TIMEOUT after the connection opened), set when it begins.
    answer_deadline = 0.0
    # A streamed answer's body, written once its head is sent (stream_answer).
    _stream: AnswerStream | None = None
    _head_sent = False
    # Whether the peer has sent its end of stream, and the future of peer_gone().
    _peer_ended = False
    _gone: asyncio.Future[None] | None = None
    # The peer's host, read as the connection opens, and the one place both an HTTP
    # request (http_peer.py) and an upgrade's hello (handshake.py) take it from: a
    # request may be handled after its peer reset the connection, when the transport
    # no longer knows it (under uvloop, a peer that reset before the connection was
    # made leaves no address saved, and get_extra_info("peername") on the closed
    # transport then raises AttributeError, or ValueError once its socket was made).
    peer_host: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        address = transport.get_extra_info("peername")
        self.peer_host = str(address[0]) if address else None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._answer_left(0)  # whatever was left unsent is gone with the transport
            self._let_go()
            self.peer_ended()

    def peer_ended(self) -> None:
        """The peer has sent its end of stream (BambooConnection.eof_received), or the
        connection is lost."""
        self._peer_ended = True
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    def peer_gone(self) -> asyncio.Future[None]:
        """Done once the peer has sent its end of stream, or the connection is lost: to
        an answer that waits with nothing to write, its peer gone. One that only
        half-closed, and still reads, looks the same from here: a write would tell
        them apart (a reset), and there is nothing to write."""
        if self._gone is None:
            self._gone = self.loop.create_future()
            if self._peer_ended:
                self._gone.set_result(None)
        return self._gone

    def resume_writing(self) -> None:
        super().resume_writing()
        self._follow_answer()

    def stream_answer(
        self,
        answers: AnswerShare,
        response: StreamedResponse,
        page_timeout: float,
        close_timeout: float | None,
    ) -> None:
        """The answer about to be sent is ``response``, whose ``held`` bytes are charged
        to ``answers`` already: its head goes as any answer's, without the end of stream
        that websockets sends after it, and then its pieces (http_stream.py)."""
        assert response.pieces is not None
        self._hold_share(answers)
        timeouts = (page_timeout, close_timeout)
        self._stream = AnswerStream(
            self, answers, response.pieces, timeouts, response.held, response.piece_bytes
        )
        self._stream.chunked = response.chunked
        self._stream.ready = response.ready
        self.protocol.head_writer = self._send_head  # type: ignore[attr-defined]

    def _send_head(self, response: Response) -> None:
        # The connection stays CONNECTING, its end of stream not sent: websockets'
        # handshake then returns as soon as the head is written, not when the peer
        # hangs up, and bytes behind the request stay charged and bounded (EARLY_BYTES).
        self.protocol.writes.append(response.serialize())
        self._head_sent = True

    def release_sent(self) -> None:
        """Releases what has left the transport's buffer of the answer held now."""
        self._follow_answer()

    def hold_answer(self, answers: AnswerShare, size: int) -> None:
        """The answer about to be written, ``size`` bytes charged to ``answers`` (its
        peer's share of the unread answers): the charge follows its bytes out of the
        transport's buffer. A streamed answer holds
        each piece in turn (http_stream.py), the previous one gone by then."""
        self._answers, self._answer_held = answers, self._answer_held + size
        self._hold_share(answers)
        now = self.loop.time()
        self._answer_since, self._answer_bytes = now, self._answer_held
        self._answer_ahead = self._unacknowledged()
        stream = self._stream
        self._answer_time = (
            stream.page_timeout if stream is not None else max(self.answer_deadline - now, 0.0)
        )
        # The kernel's buffer is outside every count: autotuned, it takes up to 4 MiB
        # of an answer nobody reads (tcp_wmem), 40 such peers 54 MB. Kept small, the
        # rest of the answer stays in the transport's buffer, where it is counted.
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ANSWER_SEND_BUFFER)
        # This connection only answers, then closes: no stream to pace, so its buffer
        # may as well report when it is empty (writing pauses as soon as it holds a
        # byte and resumes once it holds none), when the charge goes.
        self.transport.set_write_buffer_limits(high=0)
        # websockets writes the answer in the same step as process_request returns it;
        # by the next turn of the loop, what the kernel did not take is in the buffer.
        self.loop.call_soon(self._follow_answer)

    def _follow_answer(self) -> None:
        if self._answers is not None:
            self._answer_left(self.transport.get_write_buffer_size())

    def _answer_left(self, buffered: int) -> None:
        """Release the answer's charge down to the ``buffered`` bytes still to send."""
        answers = self._answers
        if answers is None:
            return
        held = min(self._answer_held, buffered)
        answers.release(self._answer_held - held)
        self._answer_held = held
        if not held:
            self._answers = None
            if self._stream is None:
                self._let_go()  # its one answer taken: nothing of it to drop any more

    def _hold_share(self, answers: AnswerShare) -> None:
        if self._holder_of is None:
            self._holder_of = answers
            answers.hold(self)

    def _let_go(self) -> None:
        if self._holder_of is not None:
            self._holder_of.let_go(self)
            self._holder_of = None

    def behind_pace(self, now: float) -> int:
        """What :meth:`drop_unread` would give back, if the peer has taken less of the
        answer (bytes it has acknowledged) than the pace that takes it all in the time
        it has (``--answer-page-timeout`` for a streamed answer's piece, what is left
        of the handshake's 10 s for a plain answer), ``PACE_GRACE`` aside: else 0. A
        streamed answer between its pages holds nothing of its peer's (the server
        reads its next page): 0."""
        held = self._answer_held
        if not held:
            return 0
        late = now - self._answer_since - PACE_GRACE
        if late <= 0:
            return 0
        # The charge follows the buffer only once it drains (hold_answer's limits):
        # what is left in it now is asked for. What the kernel's buffer took and the
        # peer has not acknowledged is not taken either: counted as taken, it kept a
        # page nobody read on pace for a second more (128 KiB of 1 MiB in 10 s).
        # The bytes ahead of it in the kernel's queue when it was written count in both
        # what is taken and what is to take: counted in neither, a streamed answer read
        # at three times the pace was behind it a third of the time (each page waited
        # for the previous one's 128 KiB tail to be acknowledged first).
        ahead = self._answer_ahead
        sent = self._answer_bytes - min(held, self.transport.get_write_buffer_size())
        taken = max(ahead + sent - self._unacknowledged(), 0)
        if taken * self._answer_time >= (ahead + self._answer_bytes) * late:
            return 0
        stream = self._stream
        return held + (stream.reserved if stream is not None else 0)

    def _unacknowledged(self) -> int:
        """Bytes written to the socket that its peer has not acknowledged yet."""
        sock = self.transport.get_extra_info("socket")
        return kernel_queue(sock.fileno()) if sock is not None else 0

    def drop_unread(self) -> int:
        """Dropped to make room among the unread answers for another peer's answer
        (UnreadAnswers.make_room), as a peer too slow to read its answer is: what the
        server holds of this one's is gone with the transport, and given back now,
        not when the loss is reported. Those bytes; 0, and not dropped, if it holds
        none (a streamed answer between its pages)."""
        stream = self._stream
        held = self._answer_held + (stream.reserved if stream is not None else 0)
        if not held:
            return 0
        self.transport.abort()  # its buffer is cleared at once
        self._answer_left(0)
        if stream is not None:
            stream.abandon()
        self._let_go()
        return held
