"""SequenceChecker: checks that a client sees every seq of the log once, in order.

Pure book-keeping, no I/O: fed the seqs of ``event`` frames and of the client's own
``ack``s, it raises :class:`SequenceError` on a duplicate or on a gap, and says where a
new connection must resume. What it relies on (docs/protocol.md, "Checking for gaps"):

- ``event`` frames on one connection come in strictly increasing seq, and carry every
  seq but those of the connection's own appends;
- so the seqs of our own appends, learnt from their acks, count as seen, and a hole
  below the last event is fine only while a publish of ours is unanswered to fill it;
- acks and other peers' events are not ordered among themselves: an ack may trail
  events with higher seqs, or overtake events with lower ones (the server acknowledges
  an append once stored and fans events out after). So a hole *above* the last event is
  not a gap: events still on their way fill it;
- a new connection is not the publisher of anything appended before it, so when it
  resumes below seqs we learnt from acks, the server sends those as events: they are
  ours and were seen, and are not delivered again.
"""

from __future__ import annotations

from typing import Literal

from .errors import SequenceError

SeenIn = Literal["event", "ack"]


class SequenceChecker:
    """Seqs seen so far, as events or as acks of our publishes.

    - ``contiguous``: every seq up to here was seen;
    - ``above``: seqs seen beyond it;
    - ``highest``: the highest seq seen;
    - ``last_event``: the last event frame's seq, or where this connection's events start;
    - ``echoes``: our own seqs beyond where this connection resumed, which it will send
      back as events.
    """

    def __init__(self, last_seq: int) -> None:
        self.reset(last_seq)

    def reset(self, last_seq: int) -> None:
        """Start again after ``last_seq``, forgetting everything seen."""
        self.contiguous = last_seq
        self.highest = last_seq
        self.last_event = last_seq
        self.above: set[int] = set()
        self.echoes: set[int] = set()

    @property
    def resume_point(self) -> int:
        """The seq to resume after: every seq up to here was seen, or is one of our own
        publishes still unanswered. Beyond it we have seen acks of ours at most; events of
        others may still be on their way there."""
        return max(self.contiguous, self.last_event)

    def resume(self) -> int:
        """A new connection resumes: the seq it asks to resume after. Our own seqs beyond
        it will come back as events (echoes)."""
        point = self.resume_point
        self.last_event = point
        self.echoes = {seq for seq in self.above if seq > point}
        return point

    # -- frames ---------------------------------------------------------------------------

    def event(self, seq: int, unanswered_publishes: int) -> bool:
        """An ``event`` frame carried ``seq``: whether to deliver it (not when it is an
        echo of our own publish). Raises on a duplicate, a seq out of order or a gap."""
        if seq <= self.last_event:
            seen = seq <= self.contiguous or seq in self.above
            problem = "duplicate" if seen else f"out of order (after {self.last_event}):"
            raise SequenceError(f"{problem} event seq {seq}", self.last_event + 1, seq)
        if seq in self.echoes:
            self.echoes.discard(seq)
            self.last_event = seq
            self.check(unanswered_publishes)
            return False
        self.see(seq, "event")
        self.check(unanswered_publishes)
        return True

    def ack(self, seq: int, duplicate: bool) -> None:
        """An ``ack`` of one of our publishes carried ``seq``. A duplicate's seq is that of
        the first append with its key: ours when it fills a hole below the last event
        (stored before a drop that lost its ack); else seen already, or not yet, and then
        its event is still to come, to this connection (someone else's append, or ours
        from an earlier connection), and is counted then."""
        if not duplicate or self.is_hole(seq):
            self.see(seq, "ack")

    def check(self, unanswered_publishes: int) -> None:
        """A hole below the last event that none of our unanswered publishes can fill is
        a gap."""
        if self.holes > unanswered_publishes:
            missing = next(
                s for s in range(self.contiguous + 1, self.last_event) if s not in self.above
            )
            raise SequenceError(
                f"gap: seq {missing} never arrived (seen through {self.last_event})",
                missing,
                self.last_event,
            )

    # -- the record -----------------------------------------------------------------------

    def see(self, seq: int, seen_in: SeenIn) -> None:
        """Count ``seq`` as seen; a seq seen before is a duplicate."""
        if seq <= self.contiguous or seq in self.above:
            raise SequenceError(
                f"duplicate {seen_in} seq {seq} (already seen through {self.highest})",
                self.contiguous + 1,
                seq,
            )
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.above:
                self.contiguous += 1
                self.above.discard(self.contiguous)
        else:
            self.above.add(seq)
        self.highest = max(self.highest, seq)
        if seen_in == "event":
            self.last_event = max(self.last_event, seq)

    @property
    def holes(self) -> int:
        """Seqs below the last event that were not seen."""
        if self.last_event <= self.contiguous:
            return 0
        seen = sum(1 for seq in self.above if seq < self.last_event)
        return self.last_event - self.contiguous - 1 - seen

    def is_hole(self, seq: int) -> bool:
        return self.contiguous < seq < self.last_event and seq not in self.above
