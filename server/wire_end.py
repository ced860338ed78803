"""How the server's connection (http_wire.py ``BambooConnection``) ends on the wire:
our close frame out (``on_close_sent``, once, whoever started the close), the peer's
close reply read from then on whatever websockets' incoming queue holds, our FIN behind
the close frame in a stop past its grace; and, in a stopping server, what the peer
sends dropped unread (``discard_input``). ``BambooConnection.send_data`` calls into it
as each write goes out.
"""

from __future__ import annotations

from collections.abc import Callable

from .shutdown import end_after_close
from .sliced_reads import SlicedReads


class WireEnd(SlicedReads):
    """websockets' server connection, read in slices, whose close frame, once out, lets
    go of what it holds for its peer and has the socket read for the peer's reply."""

    # Called once as the close frame goes out, whoever started the close: what the
    # connection holds for its peer is let go before the peer can see the close (the
    # handler ends only when the socket does, up to the close timeout later).
    on_close_sent: Callable[[], None] | None = None
    _ends_with_close = False  # a stop past its grace: FIN behind our close frame

    def close_frame_out(self) -> None:
        """Our close frame is in the socket's buffer: ``on_close_sent``, once; in a stop
        past its grace, our FIN behind it. Called by send_data, and by what writes a close
        without it (a stop's close_at_once, closing.cut_replay: else at the connection's end)."""
        closing, self.on_close_sent = self.on_close_sent, None
        if closing is not None:
            closing()
        if self._ends_with_close:
            end_after_close(self.transport)

    def end_with_close(self) -> None:
        """A stop past its grace (shutdown.py ``end_streams``): FIN behind our close."""
        self._ends_with_close = True
        if self.protocol.close_sent is not None:
            end_after_close(self.transport)

    def _closing_first(self) -> bool:
        """Whether our close frame, sent, is out ahead of anything that ends the peer's
        frames. A close frame of the peer's, or one that fails the connection, has the
        parser discard all that follows it, and the close that answers it goes out
        while the frames read with it wait to be handed on: those came before it, and
        are the peer's requests, queued as ever."""
        return self.protocol.close_rcvd is None and self.protocol.parser_exc is None

    def await_close_reply(self) -> None:
        """Our close frame is out. The peer's frames still unread in websockets' queue
        (a handshake refused behind pipelined requests leaves up to ``--max-queue`` of
        them, which nobody will read) stopped the socket being read, so the peer's
        close reply was never seen and every such close waited out the close timeout,
        then dropped the socket. From here on the socket is read whatever that queue
        holds, and the peer's data frames are dropped unqueued."""
        self._close_sent = True
        self._resume_reading()

    @property
    def discarding(self) -> bool:
        """Whether what the peer sends is dropped unread (``discard_input``)."""
        return self._discarding

    def discard_input(self) -> None:
        """From here on, what the peer sends is read and dropped unseen (a stopping
        server: shutdown.py). Its close reply costs no parsing and wakes no handler,
        and the socket's receive queue stays empty, so that closing it sends FIN, not
        a reset, which could take bytes the peer has not read yet with it. Its end of
        stream closes the connection (eof_received)."""
        self._discarding = True
        self._stop_holding()
        if self.keepalive_task is not None:
            # Its pongs would be dropped: a ping timeout would close with 1011,
            # ahead of the frames still queued and ``closed``.
            self.keepalive_task.cancel()
        if not self.transport.is_closing():
            self.transport.resume_reading()
