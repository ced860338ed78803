"""The sessions of a listing's candidate source (one user's, or all) in creation order,
kept by the in-memory index (persistence/index.py) once a listing has asked for it.

``created_at`` never changes while a session is in the index, so this order needs no
upkeep when sessions are active, renamed or counted: a session created comes in at
its place (its own, the newest, at the end), and one that leaves drops the order, made
again by the next listing that wants it. A listing by creation time then reads the
page from one end, or from a keyset position (a bisection), and a range of creation
times is a slice: ``?limit=1`` over 10,000 sessions of a user read one session,
where it ordered all 10,000 by their keys (bench/RESULTS.md, r479).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime

from bamboo_session.protocol.models import SessionMetadata

# A session's place: its creation time, then its id (the contract's tie order).
Place = tuple[datetime, str]


class CreatedOrder:
    """One source's sessions, ascending by (created_at, id): the index's own metadata
    objects, 8 bytes each beside them."""

    __slots__ = ("_sessions",)

    def __init__(self, sessions: Iterable[SessionMetadata]) -> None:
        self._sessions = sorted(sessions, key=place_of)

    def __len__(self) -> int:
        return len(self._sessions)

    def add(self, metadata: SessionMetadata) -> None:
        """A session new to the source (not in it already: the index removes first)."""
        sessions = self._sessions
        if not sessions or place_of(sessions[-1]) < place_of(metadata):
            sessions.append(metadata)  # the common case: the newest session
        else:
            bisect.insort(sessions, metadata, key=place_of)

    def span(self, low: datetime | None, high: datetime | None) -> tuple[int, int]:
        """The positions of the sessions created at ``low`` or later and before ``high``
        (either None: no bound on that side)."""
        sessions = self._sessions
        # ("" sorts before every id: the first session created at that time or later.)
        start = 0 if low is None else bisect.bisect_left(sessions, (low, ""), key=place_of)
        end = len(sessions)
        if high is not None:
            end = bisect.bisect_left(sessions, (high, ""), key=place_of)
        return start, max(start, end)

    def beyond(self, place: Place, descending: bool, start: int, end: int) -> tuple[int, int]:
        """The part of ``[start, end)`` that comes after ``place`` in the listing's
        direction (keyset paging)."""
        if descending:
            cut = bisect.bisect_left(self._sessions, place, key=place_of)
            return start, max(start, min(end, cut))
        cut = bisect.bisect_right(self._sessions, place, key=place_of)
        return min(end, max(start, cut)), end

    def walk(self, start: int, end: int, descending: bool) -> Iterator[SessionMetadata]:
        """The sessions at positions ``[start, end)``, in the listing's direction, one
        at a time (a page stops early)."""
        sessions = self._sessions
        steps = range(end - 1, start - 1, -1) if descending else range(start, end)
        return (sessions[i] for i in steps)

    def between(self, start: int, end: int) -> list[SessionMetadata]:
        """The sessions at positions ``[start, end)``, ascending."""
        return self._sessions[start:end]


def place_of(metadata: SessionMetadata) -> Place:
    return metadata.created_at, metadata.id


def first_passing(
    sessions: list[SessionMetadata],
    descending: bool,
    wanted: int,
    check: Callable[[SessionMetadata], bool],
) -> tuple[list[SessionMetadata], int]:
    """The first ``wanted`` of ``sessions`` (ascending) in the listing's direction that
    pass ``check``, and how many pass in all (every one is checked: the total counts
    them)."""
    passing = [m for m in sessions if check(m)]
    if descending:
        passing.reverse()
    return passing[:wanted], len(passing)
