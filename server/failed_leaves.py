"""FailedLeaves: this process's connections whose presence leave the store failed (an
outage), by session, remembered so that a later call for the session leaves them again
first (server/lingering_leaves.py, ``SharedPresence.leave_lingering``; an owed state's
park leaves them in its own step, server/owed_parks.py).

Until then the store counts them, until their heartbeat deadline: they swell the
session's count, and hold back a state write that waits for no connection
(server/owed_states.py). A failed leave is remembered for a heartbeat (the store has
dropped it itself by then) and at most ``MAX_LINGERING`` of them over every session:
past that, one more is not remembered (:meth:`FailedLeaves.add` says how many were
not), and counts until its deadline; :meth:`FailedLeaves.unremembered_lately` says
whether any may still, so that a write it holds back is tried again meanwhile rather
than taken for another process's to write.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from typing import Final

# Failed leaves remembered at most, over every session: each a connection id, a role
# and an epoch the server made, under 300 bytes with its slot.
MAX_LINGERING: Final = 65_536

Leaving = tuple[str, str, str | None]  # a connection id, its role, its session's epoch


class FailedLeaves:
    """Failed leaves by session, each session's with when its last failed."""

    __slots__ = (
        "_by_session",
        "_clock",
        "_lapsing",
        "_unremembered_at",
        "count",
        "heartbeat",
        "max_count",
    )

    def __init__(
        self,
        heartbeat: float,
        max_count: int = MAX_LINGERING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.heartbeat = heartbeat  # the store's: how long it counts a connection left so
        self.max_count = max_count
        self.count = 0  # connections remembered, over every session
        self._clock = clock
        self._by_session: dict[str, tuple[float, list[Leaving]]] = {}
        # ``(failed_at, session_id)``, a heap: the oldest first, whatever the order
        # they came in (put_back returns older ones). One no longer the session's
        # (taken, or failed anew since) is skipped as it comes up; rebuilt from
        # ``_by_session`` once such are the most, so it stays within twice its size.
        self._lapsing: list[tuple[float, str]] = []
        # When the last one that did not fit failed (monotonic; -inf: never).
        self._unremembered_at = -math.inf

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._by_session

    def add(
        self, session_id: str, connections: Sequence[tuple[str, str]], epoch: str | None
    ) -> int:
        """Remembers ``connections`` of the session of ``epoch`` (with the session's
        earlier ones, as failed now), as many as fit; how many did not."""
        self.forget_lapsed()
        _, held = self.pop(session_id) or (0.0, [])
        room = max(self.max_count - self.count - len(held), 0)
        held.extend((c, role, epoch) for c, role in connections[:room])
        if held:
            self._remember(session_id, self._clock(), held)
        left_out = max(len(connections) - room, 0)
        if left_out:
            self._unremembered_at = self._clock()
        return left_out

    def put_back(self, session_id: str, failed_at: float, connections: list[Leaving]) -> None:
        """What :meth:`pop` took, its leave failed again (unless the session failed
        anew meanwhile: those are the newer)."""
        if session_id not in self._by_session:
            self._remember(session_id, failed_at, connections)

    def _remember(self, session_id: str, failed_at: float, connections: list[Leaving]) -> None:
        self._by_session[session_id] = (failed_at, connections)
        self.count += len(connections)
        heapq.heappush(self._lapsing, (failed_at, session_id))
        if len(self._lapsing) > 2 * len(self._by_session) + 64:  # mostly skipped ones
            self._lapsing = [(at, sid) for sid, (at, _) in self._by_session.items()]
            heapq.heapify(self._lapsing)

    def pop(self, session_id: str) -> tuple[float, list[Leaving]] | None:
        """The session's failed leaves, forgotten here, with when its last failed."""
        lingering = self._by_session.pop(session_id, None)
        if lingering is not None:
            self.count -= len(lingering[1])
        return lingering

    def forget_lapsed(self) -> None:
        """Forget failed leaves older than a heartbeat: the store dropped those itself
        (a session's, by its last failure: its older ones have lapsed since, harmlessly)."""
        lapsed = self._clock() - self.heartbeat
        lapsing = self._lapsing
        while lapsing and lapsing[0][0] <= lapsed:
            failed_at, session_id = heapq.heappop(lapsing)
            held = self._by_session.get(session_id)
            if held is not None and held[0] == failed_at:  # else taken, or failed anew
                self.pop(session_id)

    def unremembered_lately(self) -> bool:
        """Whether the store may still count a connection whose failed leave did not
        fit here (one failed less than a heartbeat ago)."""
        return self._clock() - self._unremembered_at < self.heartbeat
