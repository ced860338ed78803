"""What a page of a resume's replay holds that no ring counts, in the memory budget,
from when it is framed until it is in the socket's buffer (or given up on).

- A page read from the store: its frames, charged by each resumer that holds them
  (they are its own).
- A page from a ring: nothing while the ring keeps its events, since the ring counts
  them. A ring lets events go on live traffic, and whenever the budget is spent; an
  event that a stalled page still holds then stays alive, so from then on it is
  charged, whole (``held``: its event and frames), once however many pages hold it,
  until the last of them is done. Without that, shedding rings under pressure would
  free nothing that stalled resumers keep, and the budget would not know; charging it
  once per resumer would make a storm of one session's stalled viewers look like a
  spent budget, and shed every other session's ring.
"""

from __future__ import annotations

from .budget import MemoryBudget
from .outbound import Outbound


class _Watched:
    """An event of a ring page that has been waiting to be sent: how many such pages
    hold it, and what the budget is charged for it (0 while a ring keeps it)."""

    __slots__ = ("charged", "pages")

    def __init__(self) -> None:
        self.pages = 0
        self.charged = 0


# id(event) -> its _Watched. A page being sent holds its events alive, so an id stays
# theirs for as long as it is here.
_WATCHED: dict[int, _Watched] = {}


class PageCharge:
    """One page's share of the budget while it is sent (module docstring)."""

    __slots__ = ("_budget", "_fixed", "_in_rings", "_watching")

    def __init__(self, fixed: int, in_rings: list[Outbound]) -> None:
        self._fixed = fixed  # the frames of its events that no ring held
        self._in_rings = in_rings  # its events that a ring held when it was framed
        self._budget: MemoryBudget | None = None
        self._watching = False

    def start(self, budget: MemoryBudget) -> None:
        self._budget = budget
        budget.used += self._fixed

    def recheck(self) -> None:
        """At each look for progress of a page not sent yet. A page sent at once (the
        common case) costs nothing here."""
        if not self._in_rings:
            return
        assert self._budget is not None
        if not self._watching:
            self._watching = True
            for out in self._in_rings:
                watched = _WATCHED.get(id(out))
                if watched is None:
                    watched = _WATCHED[id(out)] = _Watched()
                watched.pages += 1
        for out in self._in_rings:
            watched = _WATCHED[id(out)]
            if not watched.charged and out.ring is None:
                watched.charged = out.held
                self._budget.used += out.held

    def release(self) -> None:
        """The page is sent, or given up on: what it alone kept goes out of the count."""
        budget = self._budget
        if budget is None:
            return
        self._budget = None
        budget.used -= self._fixed
        if not self._watching:
            return
        for out in self._in_rings:
            watched = _WATCHED[id(out)]
            watched.pages -= 1
            if not watched.pages:
                budget.used -= watched.charged
                del _WATCHED[id(out)]
