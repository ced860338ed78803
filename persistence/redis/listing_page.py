"""What a Redis listing in steps holds while its steps run (queries.py): the sessions
that sort into the page asked for, not every match.

A listing needs the first ``offset + limit`` matches in its order and how many match.
Its steps read the source in ascending order of the source's score, so a session is
read once, but for the "late" ones: those above the source's highest score at the first
call (list.lua's ``top``), created or touched while the listing ran, among them
sessions read before (touched, or deleted and created again). So:

- an early match is counted, its id's hash noted (8 bytes), and it joins the page's
  candidates, cut back to the best ``offset + limit`` (by sort key, then id, in the
  listing's direction) whenever they pass twice that or the byte bound;
- a late one is kept by id, its last reading winning (a session touched between the
  steps is read up to four times), and at the end replaces its early reading, if it
  had one (its hash among the early ones', which a hash collision, 1 in 2^64 per pair,
  would take for one).

Replacing an early reading that was among the candidates leaves a hole that a match
cut back earlier may fill: every match cut back sorts after the best of them (the cut
line), so none does while at least ``offset + limit`` of what is left sort before it
(a session touched while a listing by activity, newest first, runs comes back newer
than any). Otherwise (a listing whose sessions changed meanwhile, with more matches
than the page reaches) the listing is read again holding every match's id and sort
key, as before. Either way, what it holds is counted in bytes (an estimate of this
process's allocations: ``ENTRY_BYTES`` per id and key beside the id's bytes) and
bounded by ``max_bytes``: past it, ``ListingTooLarge`` (HTTP 400: no reading of it is
served while the store holds as many matches), or ``ListingChangedTooLarge`` when read
again holding every match (HTTP 503: asked again while its sessions change less, the
page's candidates may do).
"""

from __future__ import annotations

from array import array
from typing import Final

from ..errors import ListingChangedTooLarge, ListingTooLarge

# What one (sort key, id) pair costs this process beside the id's own bytes: a list
# slot (8), a 2-tuple (56), a float (24), a bytes object's header (33); or, held by id,
# a dict entry (some 40 with the table's slack), the float and the bytes' header.
ENTRY_BYTES: Final = 128
# An early match's id noted as its hash, in an array of 64-bit integers.
SEEN_BYTES: Final = 8


class HoleInPage(Exception):
    """A late reading replaced a page candidate after matches were cut back."""


class PageKeeper:
    """The first ``size`` matches of a listing in steps, and how many match."""

    def __init__(
        self,
        size: int,
        descending: bool,
        max_bytes: int,
        after: tuple[float, bytes] | None = None,
    ) -> None:
        self.size = size
        self.descending = descending
        # A keyset page: only entries after this join the page (every match counts).
        self.after = after
        self.max_bytes = max_bytes
        self.candidates: list[tuple[float, bytes]] = []
        self.candidate_bytes = 0
        self.cut_line: tuple[float, bytes] | None = None  # the best match dropped
        self.seen = array("q")  # hashes of the early matches' ids
        self.late: dict[bytes, float | None] = {}  # None: read again, no longer matching
        self.late_bytes = 0

    def add(self, matches: list[bytes], early: int) -> None:
        """One step's flat ``id, sort key, ...``, its first ``early`` pairs early."""
        for position in range(0, len(matches), 2):
            id_, score = matches[position], matches[position + 1]
            if position // 2 < early:
                entry = (float(score), id_)
                if beyond(entry, self.after, self.descending):
                    self.candidates.append(entry)
                    self.candidate_bytes += ENTRY_BYTES + len(id_)
                self.seen.append(hash(id_))
                continue
            if id_ not in self.late:
                self.late_bytes += ENTRY_BYTES + len(id_)
            self.late[id_] = None if score == b"" else float(score)
        if len(self.candidates) > 2 * self.size or self.held() > self.max_bytes:
            self._cut()
        if self.held() > self.max_bytes:
            raise too_large(self.held(), self.max_bytes)

    def held(self) -> int:
        return self.candidate_bytes + SEEN_BYTES * len(self.seen) + self.late_bytes

    def _cut(self) -> None:
        self.candidates.sort(reverse=self.descending)
        if len(self.candidates) > self.size:
            best_dropped = self.candidates[self.size]
            if self.cut_line is None or self._before(best_dropped, self.cut_line):
                self.cut_line = best_dropped
            del self.candidates[self.size :]
        self.candidate_bytes = sum(ENTRY_BYTES + len(id_) for _, id_ in self.candidates)

    def _before(self, entry: tuple[float, bytes], other: tuple[float, bytes]) -> bool:
        """Whether ``entry`` sorts before ``other`` in the listing's order."""
        return entry > other if self.descending else entry < other

    def _ahead_of(self, entries: list[tuple[float, bytes]], line: tuple[float, bytes]) -> int:
        return sum(1 for entry in entries if self._before(entry, line))

    def result(self) -> tuple[list[bytes], int]:
        """The first ``size`` ids in order, and the total; HoleInPage if a late reading
        replaced a candidate after some were cut back, and a match cut back may now
        belong in the page (fewer than ``size`` of the rest sort before the cut line)."""
        present = [(score, id_) for id_, score in self.late.items() if score is not None]
        entries = [entry for entry in self.candidates if entry[1] not in self.late]
        replaced = len(entries) < len(self.candidates)
        entries += [entry for entry in present if beyond(entry, self.after, self.descending)]
        line = self.cut_line
        if replaced and line is not None and self._ahead_of(entries, line) < self.size:
            raise HoleInPage
        late_hashes = {hash(id_) for id_ in self.late}
        read_before = sum(1 for noted in self.seen if noted in late_hashes)
        total = len(self.seen) - read_before + len(present)
        entries.sort(reverse=self.descending)
        return [id_ for _, id_ in entries[: self.size]], total


class EveryMatch:
    """Every match's id and sort key, as the last step that read it saw it: what a
    listing holds when a late reading left a hole in its page."""

    def __init__(self, max_bytes: int, after: tuple[float, bytes] | None = None) -> None:
        self.max_bytes = max_bytes
        self.after = after
        self.found: dict[bytes, float] = {}
        self.bytes = 0

    def add(self, matches: list[bytes]) -> None:
        for id_, score in zip(matches[::2], matches[1::2], strict=True):
            if score == b"":
                if self.found.pop(id_, None) is not None:
                    self.bytes -= ENTRY_BYTES + len(id_)
                continue
            if id_ not in self.found:
                self.bytes += ENTRY_BYTES + len(id_)
            self.found[id_] = float(score)
        if self.bytes > self.max_bytes:
            raise ListingChangedTooLarge(
                f"this listing changed while it was read, and reading it again would hold "
                f"more than {self.max_bytes:,} bytes ({self.bytes:,} so far): ask again, "
                f"or narrow its filter"
            )

    def result(self, size: int, descending: bool) -> tuple[list[bytes], int]:
        entries = ((score, id_) for id_, score in self.found.items())
        kept = (entry for entry in entries if beyond(entry, self.after, descending))
        ordered = sorted(kept, reverse=descending)
        return [id_ for _, id_ in ordered[:size]], len(self.found)


def beyond(entry: tuple[float, bytes], after: tuple[float, bytes] | None, descending: bool) -> bool:
    """Whether ``entry`` comes after the keyset position ``after`` (if any) in the
    listing's order (ids compare byte by byte, as Redis orders a score's members)."""
    if after is None:
        return True
    return entry < after if descending else entry > after


def too_large(held: int, max_bytes: int) -> ListingTooLarge:
    return ListingTooLarge(
        f"this listing would hold more than {max_bytes:,} bytes while it is read "
        f"({held:,} so far): narrow its filter or ask for a smaller offset"
    )
