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
clock's, or, when the wall clock is behind the newest time it gave or found stored
(``saw``, from the store's open), one past that newest time.

Held ahead of the wall clock, it runs at ``HELD_RATE`` (half speed, on the monotonic
clock) until the wall clock catches up, and each stamp is at least a microsecond past
the one before. It stood still instead (a microsecond a stamp), and a clock a day
ahead for a moment (a machine booted with it wrong, then NTP's step back) left a day of
identical times: every event's ``ts`` and every session's activity the same instant,
and, since expiry is judged by this clock, not one session expired that day. At half
speed the times keep their order and their spacing (halved), sessions expire (TTLs
run up to twice as long, late by at most the step, never early), and a step of G is
absorbed in 2G: a day ahead, two days. Which clock was right cannot be told here (the
wall clock stepped back wrongly, or wrong before and corrected): half speed is the
middle between keeping the store's time and going back to the wall's. Durations
measured against it run late, never early. Thread-safe: the SQLite store stamps on
its writer's thread.

Held back by more than ``HELD_BACK_WARNING``, it says so, with the gap and when the
wall clock will have caught up, then again every ``WARN_EVERY`` seconds while it
lasts, and once when it has caught up: the log is where an operator learns why times
run ahead.

A store that may lose at a crash a time it gave (JSONL's state moves, written lazily)
keeps it elsewhere too, for its next open to ``saw`` (persistence/jsonl/clock_mark.py).

A time more than ``FAR_AHEAD`` (100 years) past the wall clock is left out, with an
error naming where it was: no clock stamped it (a hand edit, a bad import), and held
against one in the year 9999 every stamp, and every expiry a TTL put past it,
overflowed (r372: every write failed, OverflowError). Short of that bound the clock
follows what the store holds, however far ahead (see above).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final, TypeAlias

from bamboo_session.protocol.models import SessionMetadata, utcnow

log = logging.getLogger(__name__)

# datetime.now bound once: read as ``datetime.now`` it is a new bound method a call.
_wall_clock: Final = datetime.now
_monotonic: Final = time.monotonic
_TICK: Final = timedelta(microseconds=1)  # the finest step a stored time shows
_NO_STEP: Final = timedelta(0)
# How far behind the newest time held the wall clock may be before it is said: past
# NTP's slews and the microseconds a burst of stamps runs ahead, a step or a clock
# that was wrong.
HELD_BACK_WARNING: Final = timedelta(seconds=60)
# How fast the clock runs, against the monotonic clock, while held ahead of the wall
# clock: the wall clock gains 1 - HELD_RATE seconds a second on it.
HELD_RATE: Final = 0.5
WARN_EVERY: Final = 600.0  # seconds between two warnings while held back, monotonic
# How far past the wall clock a time the store holds may be before the clock leaves it
# out: as far as a TTL may run (server/config.py), so that a stamp's expiry, and a
# time held at half speed, stay far from the year 9999.
FAR_AHEAD: Final = timedelta(days=36525)
# Where a time came from, or what says it when asked (a path is made only then).
Where: TypeAlias = str | Callable[[], str]


def made_at(meta: SessionMetadata, now: datetime) -> None:
    """A new session made by its creator at the store's clock (``Session.new(...,
    now=storage.now())``, as the server makes its sessions), active at ``now``, the
    instant the store makes it (never back): its TTL runs from there, not from before
    the store's work (an expired session's replacement may outlast a short TTL). Its
    ``created_at`` stays its creator's (on JSONL, already on disk when this comes)."""
    if now > meta.last_activity_at:
        meta.touch(now)


def far_ahead() -> datetime:
    """The latest time a store's clock takes from what the store holds, now."""
    return utcnow() + FAR_AHEAD


class StoreClock:
    """The wall clock, held to never give a time earlier than one it gave or saw."""

    __slots__ = ("_held_since", "_lock", "_newest", "_stamped", "_steady", "_warned_at")

    def __init__(self) -> None:
        self._newest = datetime.min.replace(tzinfo=UTC)
        self._lock = threading.Lock()
        # When the wall clock fell behind (monotonic), and the newest time then.
        self._held_since: tuple[float, datetime] | None = None
        self._warned_at: float | None = None  # the last warning (monotonic), if held back
        # Neither held back nor warned of it: a wall time past the newest is given as
        # it is, with nothing to clear (the common case, read first).
        self._steady = True
        # The last stamp given as the wall clock's time, and when (monotonic): one
        # tuple, read without the lock (the SQLite store stamps on its writer's thread).
        self._stamped: tuple[datetime, float] | None = None

    def now(self) -> datetime:
        """The present on this clock, for comparing stored times with: never behind a
        time given before, and every stamp after it is later (a restart's fence)."""
        wall, lock = _wall_clock(UTC), self._lock
        lock.acquire()  # not a with statement: half its calls, on two or three reads an event
        try:
            if wall > self._newest and self._steady:
                self._newest = wall
                return wall
        finally:
            lock.release()
        return self._give(wall, _NO_STEP)

    def stamp(self) -> datetime:
        """A time to store: later than every time stamped or seen before, so that a
        write is told from the one before it by its time alone (``updated_since``)."""
        wall, lock = _wall_clock(UTC), self._lock
        lock.acquire()  # not a with statement: half its calls, on two or three reads an event
        try:
            if wall > self._newest and self._steady:
                self._newest = wall
                self._stamped = (wall, _monotonic())
                return wall
        finally:
            lock.release()
        return self._give(wall, _TICK)

    def seconds_since(self, moment: datetime) -> float:
        """Seconds from ``moment`` to now on this clock, 0 at the least (a fan-out's
        delivery lag, from an event's ``ts``). For the last stamp given (an event fanned
        out right after its append), the monotonic clock's time since it was given: a
        tenth of a wall clock read (``datetime.now``, a lock, ``total_seconds``), and
        the time that passed even if the wall clock stepped meanwhile."""
        stamped = self._stamped
        if stamped is not None and stamped[0] is moment:
            lag = _monotonic() - stamped[1]
        else:
            lag = (self.now() - moment).total_seconds()
        return lag if lag > 0.0 else 0.0

    def _give(self, wall: datetime, step: timedelta) -> datetime:
        """What :meth:`now` and :meth:`stamp` give past their common case (the wall
        clock ahead of the newest time, as it was): held ahead, or catching up."""
        with self._lock:
            if wall > self._newest:
                self._newest = wall
                caught_up, self._warned_at = self._warned_at is not None, None
                self._held_since, self._steady = None, True
                given, warn = wall, False
            else:
                caught_up = False
                self._steady = False
                given, warn = self._held(wall, step)
        if warn:
            self._warn(wall, given)
        elif caught_up:
            log.info("the store's clock has caught up with this machine's")
        return given

    def _held(self, wall: datetime, step: timedelta) -> tuple[datetime, bool]:
        """The time to give with the wall clock behind the newest (under the lock), and
        whether to warn of it."""
        moment = time.monotonic()
        if self._held_since is None:
            self._held_since = (moment, self._newest)
        since, held = self._held_since
        running = held + timedelta(seconds=(moment - since) * HELD_RATE)
        self._newest = given = max(running, self._newest + step)
        if given - wall <= HELD_BACK_WARNING:
            return given, False
        if self._warned_at is not None and moment - self._warned_at < WARN_EVERY:
            return given, False
        self._warned_at = moment
        return given, True

    def _warn(self, wall: datetime, given: datetime) -> None:
        gap = given - wall
        log.warning(
            "the store holds times up to %s ahead of this machine's clock (the newest "
            "%s): until the clock reaches it, in about %s, the store's clock runs at "
            "half speed, and TTLs run late by up to as much (docs/protocol.md, Clocks)",
            gap,
            given.isoformat(),
            gap / (1 - HELD_RATE),
        )

    def saw(self, *moments: datetime | None, where: Where = "a session's times as given") -> bool:
        """Times the store holds (read at its open, imported, or a new session's as its
        creator stamped them): the clock never goes back behind them, unless they are
        more than ``FAR_AHEAD`` past the wall clock: then they are left out, said with
        ``where`` they are (a file, a session), and the answer is False."""
        bound, taken = None, True
        with self._lock:
            for moment in moments:
                if moment is None or moment <= self._newest:
                    continue
                bound = bound or far_ahead()  # (the wall clock read only past the newest)
                if moment > bound:
                    taken = False
                    continue
                self._newest = moment
                self._held_since = None  # held (if it is) from this one on
        if not taken:
            log.error(
                "%s: a time more than 100 years past this machine's clock (%s), left "
                "out of the store's clock, which it would hold there (no clock stamped "
                "it: a hand edit or a bad import; docs/protocol.md, Clocks)",
                where if isinstance(where, str) else where(),
                max(moment for moment in moments if moment is not None).isoformat(),
            )
        return taken


class OnStoreClock:
    """The storage contract's clock (``now``, ``seconds_since``) for a store whose times
    are this process's :class:`StoreClock`'s (memory, JSONL, SQLite)."""

    _clock: StoreClock

    def now(self) -> datetime:
        """The store's clock: its wall clock, never behind a time it holds."""
        return self._clock.now()

    def seconds_since(self, moment: datetime) -> float:
        return self._clock.seconds_since(moment)
