"""RedisClock: Redis's clock as this process reads it (``RedisStorage.now``).

A Redis store stamps ``updated_at``, ``last_activity_at``, ``expires_at`` and events'
``ts`` with Redis's clock (``TIME`` in its scripts, common.lua ``clock``; a session
made at this clock's ``now``, its ``created_at`` too, in create.lua), and judges
expiry by it; every instance of the server reads those times, on machines whose clocks
may be seconds or hours from Redis's. An instance that compared them with its own
clock took a session for expired when Redis did not (4404 to every attach of a session
Redis held alive, its live peers closed with ``session expired``, every HTTP read 404,
with the instance's clock an hour ahead and a TTL of an hour), and for quiet when its
peers had spoken (bench/clock_jump.py, bench/RESULTS.md). So the server compares them
with this: Redis's ``TIME``, read at the open and every ``READ_EVERY`` seconds after,
carried from the reading by this process's monotonic clock (a reading whose round trip
a busy Redis held up is left: ``SLOW_ROUND_TRIP``). A step of Redis's clock is seen at
the next reading.

Carried by one local clock, a jump of that clock alone moved it: with the monotonic
clock 2 h on (a VM resumed; bench/clock_jump.py --monotonic), a look the jump fired ran
before the next reading and closed a live session's peer 4404 ``session expired``. So
the reading is carried by the wall clock too, and ``now`` gives the lesser of the two:
one local clock jumping forward alone moves nothing, and where the two disagree (a
jump of either, a step back of the wall clock, a suspend) Redis is read again at once
(``READ_AGAIN_AFTER`` after the last reading at the least), not ``READ_EVERY`` on;
meanwhile expiry comes late, never early. A reading older than ``READ_EVERY`` +
``STALE`` on the monotonic clock (both local clocks jumped together, an event loop held
up, Redis away) carries nothing: the clock stands at the newest time it gave from it
until a new reading (``now`` asks for one), late, never early. Until the first reading, and
where it fails, it is this machine's wall clock (an ACL that refuses ``TIME`` fails
every script too: docs/storage-redis.md, Scripts).

An answer more than ``FAR_AHEAD`` (100 years, the local stores' bound:
persistence/clock.py) from this machine's clock, ahead or behind, is a failed reading:
taken, one 9,500 years on (a proxy's, a broken Redis's) made ``now`` raise (year 11533
is out of range), and every request failed. It is said once, as is the first sane
answer after it (tests/test_redis_clock_absurd.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from bamboo_session.protocol.models import SessionMetadata, utcnow
from bamboo_session.tasks import detached

from ..base import StorageError
from ..clock import FAR_AHEAD
from .client import stop_task

if TYPE_CHECKING:
    from .client import Commands

log = logging.getLogger(__name__)

# How far the clock of a creator that gave a new session times of its own (an import's,
# an embedder's) may be from Redis's before its activity and expiry are Redis's:
# created by a clock an hour behind, with a TTL of an hour, it expired before its first
# append; by one an hour ahead, it outlived its TTL by that hour.
CREATOR_CLOCK_OFF: Final = timedelta(seconds=1)
# Seconds between two readings of Redis's clock: a step of it is seen within this. Not
# the heartbeat's pace: a test's heartbeat of 0.3 s read it ten times a second, for
# nothing (the monotonic clock carries the reading well for far longer).
READ_EVERY: Final = 10.0
# A reading is off by up to half its round trip (Redis's TIME is taken somewhere in
# it): one held up by a busy Redis (a slow script, a fork, a CLIENT PAUSE, a retry on
# a new connection) is not taken, and the last one stands, if its round trip took
# longer than this and than twice the last one's, unless the last is stale (older than
# the interval and STALE) or the local clocks disagree since it: then it is taken as
# at the end of its round trip (late, never early), not at its middle.
SLOW_ROUND_TRIP: Final = 0.1
# Seconds past the interval after which a reading carries nothing: the loop reads at
# the interval, and a reading that old means it could not (Redis away, the event loop
# held up) or the monotonic clock jumped. Small: both local clocks jumping together, by
# too little to make the reading stale, show as that much ahead until the next reading.
STALE: Final = 3.0
# Seconds by which the two local clocks' carryings of one reading may part before they
# are taken to disagree (a clock jumped): both are slewed alike by NTP.
DISAGREE: Final = 0.05
# Seconds between two readings at the least, however often ``now`` asks for one (a
# Redis away fails each).
READ_AGAIN_AFTER: Final = 1.0


class RedisClock:
    """Redis's ``TIME``, carried between readings by the lesser of this process's
    monotonic and wall clocks."""

    def __init__(self, redis: Commands, interval: float = READ_EVERY) -> None:
        self._redis = redis
        self.interval = interval
        self._offset: float | None = None  # Redis's time less the monotonic clock, seconds
        self._wall_offset = 0.0  # Redis's time less the wall clock, at the same reading
        self._round_trip = 0.0  # of the reading taken, seconds
        self._taken_at = 0.0  # when, on the monotonic clock
        # The newest time given from the reading held, seconds since the epoch: not from
        # an earlier one, which a step back of Redis's clock left ahead of it.
        self._newest = 0.0
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()  # ``now`` asks for a reading before the interval
        self._absurd = False  # the last answer was too far from this machine's clock
        # The last time ``now`` gave: a session made at it is made now, and create.lua
        # stamps it with Redis's TIME itself (this reading is off by up to half a
        # round trip, the TIME in the script by nothing).
        self.last_given: datetime | None = None

    def now(self) -> datetime:
        """Redis's clock now, as last read (this machine's wall clock before any read)."""
        carried = None if self._offset is None else self._carried()
        now = utcnow() if carried is None else datetime.fromtimestamp(carried, UTC)
        self.last_given = now
        return now

    def _carried(self) -> float:
        """The last reading carried to now, seconds since the epoch; asks for a new
        reading where it cannot be trusted."""
        assert self._offset is not None
        carried = self._carry()
        if carried is None:  # stale: standing still
            self._want_reading()
            return max(self._taken_at + self._offset, self._newest)
        by_monotonic, by_wall = carried
        if abs(by_monotonic - by_wall) > DISAGREE:
            self._want_reading()
        self._newest = max(self._newest, min(by_monotonic, by_wall))
        return min(by_monotonic, by_wall)

    def _carry(self) -> tuple[float, float] | None:
        """The reading carried to now by the monotonic and by the wall clock; None if
        it is stale."""
        assert self._offset is not None
        moment = time.monotonic()
        if moment - self._taken_at > self.interval + STALE:
            return None
        return moment + self._offset, time.time() + self._wall_offset

    def _want_reading(self) -> None:
        if self._wanted.is_set() or self._task is None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # another thread's call: the loop reads at its interval
            return
        self._wanted.set()

    def _unsure(self) -> bool:
        """Whether the reading held cannot be carried as it is: none, stale, or the
        local clocks disagree since it."""
        carried = None if self._offset is None else self._carry()
        return carried is None or abs(carried[0] - carried[1]) > DISAGREE

    async def settle(self) -> None:
        """Reads Redis's clock now if the reading held cannot be trusted, before a
        decision that stamps (``restamp``): a wall clock stepped back held ``now``
        behind by the step until the next reading. A Redis away leaves it as it is."""
        if self._unsure():
            with contextlib.suppress(StorageError):
                await self.read()

    def made_now(self, meta: SessionMetadata) -> bool:
        """Whether a new session was made at this clock's ``now`` (``Session.new(...,
        now=storage.now())``, as the server makes its sessions): then create.lua
        stamps it with Redis's TIME; times given otherwise are the creator's."""
        return meta.created_at == meta.updated_at == self.last_given

    def restamp(self, meta: SessionMetadata) -> None:
        """A new session of times of its own: its activity (and expiry) at Redis's
        now, if the clock that stamped it is more than ``CREATOR_CLOCK_OFF`` from
        Redis's; its ``created_at`` stays the creator's."""
        now = self.now()
        if abs(meta.updated_at - now) > CREATOR_CLOCK_OFF:
            meta.touch(now)

    async def read(self) -> None:
        """Reads Redis's ``TIME``: the offsets, taken at the middle of the round trip,
        unless that was slow (``SLOW_ROUND_TRIP``): then the reading held stands if it
        is good, else this one is taken as at the end of its round trip (Redis answered
        somewhere in it: late by up to the round trip, never early; a pause of 5 s
        after a stale reading set the clock 2.5 s ahead at the middle, and a session
        Redis held alive was refused 4404, tests/test_redis_clock_held_stale.py)."""
        before, wall_before = time.monotonic(), time.time()
        answer = await self._redis.read("TIME")
        after, wall_after = time.monotonic(), time.time()
        try:  # (a proxy in between may answer anything: the loop must go on)
            redis_time = int(answer[0]) + int(answer[1]) / 1_000_000
        except (TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise StorageError(f"Redis answered TIME with {answer!r:.80}") from exc
        self._check_sane(redis_time, answer)
        round_trip = after - before
        if self._holds_better(round_trip) and round_trip > SLOW_ROUND_TRIP:
            log.debug("Redis's clock read in %.3f s: the last reading stands", round_trip)
            return
        if round_trip > SLOW_ROUND_TRIP:  # taken as the held one is unsure: at the end
            self._offset, self._wall_offset = redis_time - after, redis_time - wall_after
        else:
            self._offset = redis_time - (before + after) / 2
            self._wall_offset = redis_time - (wall_before + wall_after) / 2
        self._round_trip, self._taken_at = round_trip, after
        # Stale, it stands at what this reading gave: a Redis an hour back since the last
        # one left it an hour ahead (tests/test_redis_clock_step_back_stale.py).
        self._newest = 0.0

    def _check_sane(self, redis_time: float, answer: object) -> None:
        """StorageError if ``redis_time`` is more than ``FAR_AHEAD`` from this machine's
        clock, said the first time of a run of them; the end of a run is said too."""
        if abs(redis_time - time.time()) <= FAR_AHEAD.total_seconds():
            if self._absurd:
                self._absurd = False
                log.info("Redis's clock is within 100 years of this machine's again")
            return
        message = f"Redis answered TIME with {answer!r:.80}, more than 100 years from "
        message += "this machine's clock"
        if not self._absurd:
            self._absurd = True
            log.warning(
                "%s: the reading is not taken, the last one stands (this machine's clock "
                "before any), until an answer within 100 years",
                message,
            )
        raise StorageError(message)

    def _holds_better(self, round_trip: float) -> bool:
        """Whether the reading held is better than one of ``round_trip`` made now: one
        there is, to be trusted, of a round trip less than half as long."""
        if self._unsure():
            return False
        return round_trip > 2 * self._round_trip

    async def start(self) -> None:
        """The first reading (a Redis that refuses ``TIME`` is said once), then one
        every ``interval`` seconds, or sooner when ``now`` asks."""
        try:
            await self.read()
        except StorageError as exc:
            if not self._absurd:  # (an absurd answer is said already)
                log.warning("cannot read Redis's clock, this machine's is used: %s", exc)
        self._task = detached(self._loop(), name="bamboo-redis-clock")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(READ_AGAIN_AFTER)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.interval - READ_AGAIN_AFTER, 0.0)):
                    await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.read()
            except StorageError as exc:  # Redis away: the last reading stands meanwhile
                log.debug("reading Redis's clock failed: %s", exc)
