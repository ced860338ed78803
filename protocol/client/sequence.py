"""SequenceChecker: checks that a client sees every seq of the log once, in order.

Pure book-keeping, no I/O: fed the seqs of ``event`` frames and of the client's own
``ack``s, it raises :class:`SequenceError` on a duplicate or on a gap. The rules are
docs/protocol.md's "Checking for gaps": the server never sends a publisher its own
events, so the seqs of our own appends, learnt from their acks, count as seen; and an
ack may trail events with higher seqs, so a hole is fine while one of our publishes is
unanswered that could fill it.
"""

from __future__ import annotations

from typing import Literal

from .errors import SequenceError

SeenIn = Literal["event", "ack"]


class SequenceChecker:
    """Seqs seen so far: ``contiguous``, every seq up to here was seen; ``above``, seqs
    seen beyond it (the holes below them belong to publishes of ours whose ``ack`` has
    not arrived yet); ``highest``, the highest seq seen."""

    def __init__(self, last_seq: int) -> None:
        self.reset(last_seq)

    def reset(self, last_seq: int) -> None:
        """Start again after ``last_seq``, forgetting everything seen."""
        self.contiguous = last_seq
        self.highest = last_seq
        self.above: set[int] = set()

    @property
    def holes(self) -> int:
        """Seqs below the highest seen that were not seen."""
        return self.highest - self.contiguous - len(self.above)

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

    def is_hole(self, seq: int) -> bool:
        return self.contiguous < seq < self.highest and seq not in self.above

    def check(self, unanswered_publishes: int) -> None:
        """A hole that none of our unanswered publishes can fill is a gap."""
        if self.holes > unanswered_publishes:
            missing = next(
                s for s in range(self.contiguous + 1, self.highest) if s not in self.above
            )
            raise SequenceError(
                f"gap: seq {missing} never arrived (seen through {self.highest})",
                missing,
                self.highest,
            )

    def event(self, seq: int, unanswered_publishes: int) -> None:
        """An ``event`` frame carried ``seq``."""
        self.see(seq, "event")
        self.check(unanswered_publishes)

    def ack(self, seq: int, duplicate: bool) -> None:
        """An ``ack`` of one of our publishes carried ``seq``. A duplicate's seq is that
        of the first append with its key: ours when it fills a hole (stored before a
        drop that lost its ack), else already seen or someone else's."""
        if not duplicate or self.is_hole(seq):
            self.see(seq, "ack")

    @property
    def resume_point(self) -> int:
        """The seq a reconnect asks to resume after."""
        return self.highest
