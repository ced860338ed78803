"""ReadWaits: how long a connection's reading was held back for its byte rate's debt
(limits.py), as the connection (http_wire.py) begins and ends its waits.

The waits are the reads held after a frame ran into debt (pages a peer draws wait for
its read allowance instead, and are counted apart: page_requests.py). What is counted
is the time reading was actually held back, once for waits that overlap: a close ends
a wait early, and a busy loop wakes it late, so the debt is not the time waited.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ReadWaits:
    """A connection's waits for its debt: those under way, and the seconds waited."""

    __slots__ = ("_loop", "_on_wait", "_since", "_under_way", "held_until", "waited")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_wait: Callable[[float], None] | None
    ) -> None:
        self._loop = loop
        self._on_wait = on_wait  # told the seconds of each span of waiting, as it ends
        self._under_way = 0
        self._since = 0.0  # loop time the first wait under way began
        self.waited = 0.0  # seconds reading was held back, in all, so far
        self.held_until = 0.0  # loop time the waits under way are due to end (0.0: none)

    def begin(self, debt: float) -> None:
        now = self._loop.time()
        if not self._under_way:
            self._since = now
        self._under_way += 1
        self.held_until = max(self.held_until, now + debt)

    def held_seconds(self) -> float:
        """Seconds reading was held back so far, the wait under way included."""
        if not self._under_way:
            return self.waited
        return self.waited + self._loop.time() - self._since

    def end(self) -> None:
        """Once no wait is under way, the time they held reading back is counted."""
        self._under_way -= 1
        if self._under_way:
            return
        waited = self._loop.time() - self._since
        self.held_until = 0.0
        self.waited += waited
        if self._on_wait is not None:
            self._on_wait(waited)
