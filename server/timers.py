"""ActivityTimer: when a live session next needs looking at. While connections are
attached, after ``idle_timeout`` or a third of the session's TTL, whichever is sooner
(is it idle? did its peers send frames since the last look, which is activity?);
while parked, after ``disconnect_retention`` from when it parked (retire), and at looks
before that (as often, or at the session's expiry when that is sooner) that retire it
once the store no longer holds it alive, and save a state its store missed. One timer
handle at a time; a tick from a timer that was re-armed since is recognised by its
generation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class ActivityTimer:
    __slots__ = (
        "_armed_at",
        "_fire",
        "_generation",
        "_handle",
        "_last_traffic",
        "_loop",
        "_retire_at",
        "retires",
    )

    def __init__(self, fire: Callable[[int], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fire = fire  # called with the generation of the timer that fired
        self._generation = 0
        self._handle: asyncio.TimerHandle | None = None
        self._last_traffic = self._armed_at = self._loop.time()
        self._retire_at: float | None = None  # while parked: the end of its retention
        self.retires = False  # the next tick is the end of the retention

    def note_traffic(self) -> None:
        """A peer sent a frame: the session is not idle."""
        self._last_traffic = self._loop.time()

    def quiet_for(self) -> float:
        """Seconds since a peer last sent a frame."""
        return self._loop.time() - self._last_traffic

    def traffic_since_armed(self) -> bool:
        """Whether a peer sent a frame since the timer was last armed."""
        return self._last_traffic >= self._armed_at

    def arm(self, delay: float) -> None:
        """Look at a session with connections attached after ``delay``."""
        self._retire_at = None
        self.retires = False
        self._set(delay)

    def park(self, retention: float, look: float | None = None) -> None:
        """A session with no connection: the tick ``retention`` seconds after it parked
        (the first call since :meth:`arm`) retires it; one comes after ``look`` before
        that, to look at the store (is the session still there? is it owed a state?)."""
        now = self._loop.time()
        if self._retire_at is None:
            self._retire_at = now + retention
        left = self._retire_at - now
        self.retires = look is None or left <= look
        self._set(left if look is None or self.retires else look)

    def _set(self, delay: float) -> None:
        self.cancel()
        self._armed_at = self._loop.time()
        self._generation += 1
        self._handle = self._loop.call_later(max(delay, 0.0), self._fire, self._generation)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def is_current(self, generation: int) -> bool:
        return generation == self._generation
