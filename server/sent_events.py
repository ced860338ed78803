"""What a connection has handed its socket of its session's events: the seq of the last
event frame, and the one check every frame passes on its way there (live frames the
flusher writes, the writer task's, a replay's pages, a cut replay's last frames).

By contract a connection gets each event once, in strictly increasing seq, and misses
none but those it published itself (docs/protocol.md, Checking for gaps). The room and
the replay make it so; this check holds the socket to it whatever went wrong before
them. An event frame at or below the last one handed over is not sent again: counted
(``bamboo_events_not_resent_total``) and logged, once per connection. One that would
leave a gap, on a connection that never published, is not sent, nor anything behind
it: the connection is closed with 1011 at once, counted (``bamboo_event_gaps_total``)
and logged, and its client resumes from the last event it got, which its replay then
fills in from the log. Not a gap in a replay's page, though: that was read from the
log (or the ring that keeps its tail), which a resume would read again, to meet the
same gap for ever; it is sent as it is (counted and logged the same), and the client
sees it for itself. A publisher's stream misses its own appends by design, so only
repeats are held back from it. The check costs one subtraction and one comparison per
event frame, and allocates nothing unless it holds a frame back.
"""

from __future__ import annotations

import contextvars
from typing import TYPE_CHECKING, Final

import structlog

from bamboo_session.protocol.errors import CloseCode

if TYPE_CHECKING:
    from .metrics import Metrics
    from .outbound import Outbound
    from .outbox import CloseRequest

log = structlog.get_logger("bamboo_session.connection")

# Where a frame was on its way to the socket when it was held back (the metrics' label).
FLUSH: Final = "flush"  # live frames, written by the flusher at the end of a loop turn
WRITER: Final = "writer"  # frames the connection's writer task sends (a full socket)
REPLAY: Final = "replay"  # a page of a resume's replay
CLOSE: Final = "close"  # the frames a cut replay leaves before its close
PATHS: Final = (FLUSH, WRITER, REPLAY, CLOSE)

NOT_RESENT: Final = (
    "an event this connection was sent already was not sent again; further ones are counted only"
)
GAP: Final = "events missing before an event frame: not sent, connection closed to resume"
GAP_REASON: Final = "events missing from this stream; resume"
GAP_IN_LOG: Final = "events missing before an event frame of a replay, from the log: sent as it is"


class SentEvents:
    """The last event seq handed to the socket, and the check before each hand-over;
    the base of :class:`~server.writer_life.WriterLife`, itself the outbox's base."""

    __slots__ = ("expects_gaps", "metrics", "not_resent", "sent_seq", "session_id")

    if TYPE_CHECKING:  # the Outbox's
        connection_id: str
        closing: CloseRequest | None

        def drop(self, code: CloseCode, reason: str) -> None: ...

    def __init__(self, session_id: str | None = None, metrics: Metrics | None = None) -> None:
        self.session_id = session_id
        self.metrics = metrics
        # Where its stream starts is set by SessionRoom.join: the events after it.
        self.sent_seq = 0
        # Seqs it is not sent by design: its own appends (SessionRoom.expect), or any
        # until it joins a room (an outbox of the in-process API, of a test).
        self.expects_gaps = True
        self.not_resent = 0  # event frames held back as sent already (the first logged)

    def to_socket(self, frames: list[Outbound], path: str) -> list[Outbound]:
        """``frames`` as they may go to the socket now, through ``path``: as they are
        (the same list), unless an event frame among them was sent already (it is
        left out) or follows a gap (it and those behind it are left out, and the
        connection is closed; in a replay's page, it is sent all the same)."""
        sent = self.sent_seq
        for out in frames:
            seq = out.seq
            if seq:  # an event (any other frame's seq is 0)
                # seq - sent is 1, a cached int, when all is well: nothing is allocated.
                if seq - sent != 1 and (seq <= sent or not self.expects_gaps):
                    return self._held_back(frames, path)
                sent = seq
        self.sent_seq = sent
        return frames

    def _held_back(self, frames: list[Outbound], path: str) -> list[Outbound]:
        """:meth:`to_socket` once a frame must be held back: the frames that may go."""
        kept: list[Outbound] = []
        for out in frames:
            seq, sent = out.seq, self.sent_seq
            if seq and seq <= sent:
                self._not_resent(seq, path)
                continue
            if seq and seq - sent != 1 and not self.expects_gaps:
                if path != REPLAY:
                    self._gap(seq, path)
                    break
                self._gap_in_log(seq)
            if seq:
                self.sent_seq = seq
            kept.append(out)
        return kept

    def _not_resent(self, seq: int, path: str) -> None:
        self.not_resent += 1
        if self.metrics is not None:
            self.metrics.events_not_resent.labels(path=path).inc()
        if self.not_resent == 1:
            self._log(NOT_RESENT, seq, path)

    def _gap(self, seq: int, path: str) -> None:
        if self.metrics is not None:
            self.metrics.event_gaps.labels(path=path).inc()
        self._log(GAP, seq, path)
        closing = self.closing
        if closing is not None and closing.code == CloseCode.NORMAL:
            # The close already asked for stays (drop), but not as 1000 (the session
            # closed): that would tell the client it has the whole stream, to stop short
            # of the events held back. It resumes, and its resume, refused (4409), tells
            # it to read them from the log (protocol/client, server/web/client).
            closing.code, closing.reason = CloseCode.INTERNAL_ERROR, GAP_REASON
        self.drop(CloseCode.INTERNAL_ERROR, GAP_REASON)

    def _gap_in_log(self, seq: int) -> None:
        if self.metrics is not None:
            self.metrics.event_gaps.labels(path=REPLAY).inc()
        self._log(GAP_IN_LOG, seq, REPLAY)

    def _log(self, message: str, seq: int, path: str) -> None:
        # In a context of its own: the flusher runs in the context of whichever task
        # queued the turn's first frame, whose ids may be another connection's.
        contextvars.Context().run(
            log.warning,
            message,
            connection_id=self.connection_id,
            session_id=self.session_id,
            seq=seq,
            sent_seq=self.sent_seq,
            path=path,
        )
