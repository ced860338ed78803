"""StoreClock: the clock of a store one process holds (JSONL, SQLite, memory), which
never goes backwards.

Such a store stamps ``updated_at``, ``last_activity_at``, ``expires_at`` and events'
``ts`` with the wall clock, which an operator or NTP may step back (an hour, say, or a
machine that boots before NTP has set its clock). Stamped as read, those times went
backwards: the session active right now was listed behind sessions quiet for an hour,
an event's ``ts`` came before the one it follows, and a server started with its clock
behind the times its store held took the sessions a dead server left ``active`` for
written since its own start, and never parked them (server/restart_park.py; measured
with bench/clock_jump.py, bench/RESULTS.md). So each time it gives is the wall
clock's, or just past the newest time it gave or found stored (``saw``, from the
store's open), when the wall clock is behind that: after a step back it stands still,
a microsecond a stamp, until the wall clock catches up. Durations measured against
it (a TTL's) then run late by at most the step, never early. Thread-safe: the SQLite
store stamps on its writer's thread.

Held back by more than ``HELD_BACK_WARNING``, it says so once, until the wall clock
has caught up: a clock an hour ahead for a moment (a machine that booted with it
wrong, then NTP's step) leaves times an hour ahead in the store, and for that hour
every new time is that one plus a few microseconds and no session expires; the log is
where an operator learns why.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Final

from bamboo_session.protocol.models import utcnow

log = logging.getLogger(__name__)

_TICK: Final = timedelta(microseconds=1)  # the finest step a stored time shows
# How far behind the newest time held the wall clock may be before it is said: past
# NTP's slews and the microseconds a burst of stamps runs ahead, a step or a clock
# that was wrong.
HELD_BACK_WARNING: Final = timedelta(seconds=60)


class StoreClock:
    """The wall clock, held to never give a time earlier than one it gave or saw."""

    __slots__ = ("_held_back", "_lock", "_newest")

    def __init__(self) -> None:
        self._newest = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()
        self._held_back = False  # said: the wall clock is far behind the newest time

    def now(self) -> datetime:
        """The present on this clock, for comparing stored times with: never behind a
        time given before, and every stamp after it is later (a restart's fence)."""
        wall = utcnow()
        with self._lock:
            if wall > self._newest:
                self._newest = wall
                self._held_back = False
                return wall
            now = self._newest
        self._check_held_back(wall, now)
        return now

    def stamp(self) -> datetime:
        """A time to store: later than every time stamped or seen before, so that a
        write is told from the one before it by its time alone (``updated_since``)."""
        wall = utcnow()
        with self._lock:
            if wall > self._newest:
                self._newest = wall
                self._held_back = False
                return wall
            now = self._newest = self._newest + _TICK
        self._check_held_back(wall, now)
        return now

    def _check_held_back(self, wall: datetime, now: datetime) -> None:
        """Says once, until the wall clock catches up, that it is far behind."""
        if self._held_back or now - wall <= HELD_BACK_WARNING:
            return
        self._held_back = True
        log.warning(
            "the store holds times up to %s ahead of this machine's clock (the newest "
            "%s): until the clock reaches it, new times are that one plus a "
            "microsecond a write, and TTLs run late by as much (docs/protocol.md, "
            "Clocks)",
            now - wall,
            now.isoformat(),
        )

    def saw(self, *moments: datetime | None) -> None:
        """Times the store holds (read at its open, imported, or a new session's as its
        creator stamped them): the clock never goes back behind them."""
        with self._lock:
            for moment in moments:
                if moment is not None and moment > self._newest:
                    self._newest = moment
