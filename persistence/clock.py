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
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Final

from bamboo_session.protocol.models import utcnow

_TICK: Final = timedelta(microseconds=1)  # the finest step a stored time shows


class StoreClock:
    """The wall clock, held to never give a time earlier than one it gave or saw."""

    __slots__ = ("_lock", "_newest")

    def __init__(self) -> None:
        self._newest = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """The present on this clock, for comparing stored times with: never behind a
        time given before, and every stamp after it is later (a restart's fence)."""
        now = utcnow()
        with self._lock:
            if now > self._newest:
                self._newest = now
            return self._newest

    def stamp(self) -> datetime:
        """A time to store: later than every time stamped or seen before, so that a
        write is told from the one before it by its time alone (``updated_since``)."""
        now = utcnow()
        with self._lock:
            if now <= self._newest:
                now = self._newest + _TICK
            self._newest = now
        return now

    def saw(self, *moments: datetime | None) -> None:
        """Times the store holds (read at its open, imported, or a new session's as its
        creator stamped them): the clock never goes back behind them."""
        with self._lock:
            for moment in moments:
                if moment is not None and moment > self._newest:
                    self._newest = moment
