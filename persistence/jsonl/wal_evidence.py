"""What WAL replay (``wal_replay.py``) reads in the segments' records to tell damage
from a crash: each session's lines as the records hold them (:class:`Pending`, which
sees a session's records skip seqs) and the records lost (:class:`Holes`, which sees a
later commit's record, or any record, follow one).

A crash cuts short only the last commit, and leaves zeros where it wrote nothing;
anything else these find is damage, for which replay keeps the segments aside and the
logs' lines past them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, NamedTuple

from .wal import ReadRecord


@dataclass(slots=True)
class Pending:
    """What the segments hold for one session: seq -> (offset in the log, line)."""

    lines: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    last: int = 0
    # The first seq a record jumped to past ``last + 1``: a record lost before a later
    # commit's. A crash cuts short only the last commit, which holds one record per
    # session, so that is damage (a lost write, a sector read back as zeros).
    skipped_to: int = 0

    def add(self, first_seq: int, offset: int, lines: list[bytes]) -> None:
        if self.lines and first_seq > self.last + 1 and not self.skipped_to:
            self.skipped_to = first_seq
        # A record from seq s on supersedes earlier records from s on.
        for seq in range(first_seq, self.last + 1):
            self.lines.pop(seq, None)
        for i, line in enumerate(lines):
            self.lines[first_seq + i] = (offset, line)
            offset += len(line) + 1
        self.last = first_seq + len(lines) - 1


class Lost(NamedTuple):
    """A record lost: ``zeros`` where its line holds a zero byte (a page a crash left
    unwritten), else a line that does not decode or fails its CRC."""

    zeros: bool


UNWRITTEN: Final = Lost(zeros=True)
GARBLED: Final = Lost(zeros=False)


@dataclass(slots=True)
class Holes:
    """Whether a lost record (zero bytes, or one that fails to decode or its CRC) is
    damage rather than a crash's unwritten or torn page.
    A crash cuts short only the last commit, which holds its cancellations of failed
    deletes, then one record of lines per session, then its deletions, and ends its
    segment's records (a segment rotates only once it is synced). So a record after
    the hole in a later segment, or a second record of lines of one session after it,
    or one after a deletion, comes from a later commit: the hole was synced once, then
    damaged. A cancellation after it proves nothing (its commit's lines follow it).
    A whole line without a zero byte that is lost is damage, wherever it is: what a
    crash leaves unwritten reads as zeros, so it was written whole, then damaged (a
    bit flipped in s's last record, or in the newline that ends it: s's acknowledged
    last line was cut as a torn commit's, and its seq acknowledged again, r499)."""

    first_in: int = 0  # the segment of the first hole
    seen: set[str] = field(default_factory=set)  # sessions with a record after it
    deletion_seen: bool = False  # a commit writes its deletions after all its lines
    damage_in: int = 0  # the hole's segment, once a later commit proved it damage

    def hole(self, segment: int, lost: Lost) -> None:
        self.first_in = self.first_in or segment
        if not lost.zeros:
            self.damage_in = self.damage_in or segment

    def record(self, segment: int, record: ReadRecord) -> None:
        if not self.first_in or self.damage_in:
            return
        if segment > self.first_in or (
            record.of_lines and (record.sid in self.seen or self.deletion_seen)
        ):
            self.damage_in = self.first_in
        if record.deleted:
            self.deletion_seen = True
        elif record.of_lines:
            self.seen.add(record.sid)
