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
with this: the offset of Redis's ``TIME`` from this process's monotonic clock, read at
the open and every ``READ_EVERY`` seconds after, added to the monotonic clock (a
reading whose round trip a busy Redis held up is left: ``SLOW_ROUND_TRIP``). A step of
this machine's wall clock moves nothing here; one of Redis's is seen at the next
reading. Until the first reading, and where it fails, it is this machine's wall clock
(an ACL that refuses ``TIME`` fails every script too: docs/storage-redis.md, Scripts)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from bamboo_session.protocol.models import SessionMetadata, utcnow

from ..base import StorageError
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
# longer than this and than twice the last one's, unless the last is STALE old: a
# Redis slower for good (a farther network) is read at its new pace.
SLOW_ROUND_TRIP: Final = 0.1
STALE: Final = 60.0


class RedisClock:
    """Redis's ``TIME``, carried between readings by this process's monotonic clock."""

    def __init__(self, redis: Commands, interval: float = READ_EVERY) -> None:
        self._redis = redis
        self.interval = interval
        self._offset: float | None = None  # Redis's time less the monotonic clock, seconds
        self._round_trip = 0.0  # of the reading taken, seconds
        self._taken_at = 0.0  # when, on the monotonic clock
        self._task: asyncio.Task[None] | None = None
        # The last time ``now`` gave: a session made at it is made now, and create.lua
        # stamps it with Redis's TIME itself (this reading is off by up to half a
        # round trip, the TIME in the script by nothing).
        self.last_given: datetime | None = None

    def now(self) -> datetime:
        """Redis's clock now, as last read (this machine's wall clock before any read)."""
        if self._offset is None:
            now = utcnow()
        else:
            now = datetime.fromtimestamp(time.monotonic() + self._offset, UTC)
        self.last_given = now
        return now

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
        """Reads Redis's ``TIME``: the offset, taken at the middle of the round trip,
        unless that was slow (``SLOW_ROUND_TRIP``) and the reading held is good."""
        before = time.monotonic()
        answer = await self._redis.read("TIME")
        after = time.monotonic()
        try:  # (a proxy in between may answer anything: the loop must go on)
            seconds, micros = int(answer[0]), int(answer[1])
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise StorageError(f"Redis answered TIME with {answer!r:.80}") from exc
        round_trip = after - before
        if self._holds_better(round_trip, after) and round_trip > SLOW_ROUND_TRIP:
            log.debug("Redis's clock read in %.3f s: the last reading stands", round_trip)
            return
        self._offset = seconds + micros / 1_000_000 - (before + after) / 2
        self._round_trip, self._taken_at = round_trip, after

    def _holds_better(self, round_trip: float, now: float) -> bool:
        """Whether the reading held is better than one of ``round_trip`` made ``now``:
        one there is, not ``STALE``, of a round trip less than half as long."""
        if self._offset is None or now - self._taken_at >= STALE:
            return False
        return round_trip > 2 * self._round_trip

    async def start(self) -> None:
        """The first reading (a Redis that refuses ``TIME`` is said once), then one
        every ``interval`` seconds."""
        try:
            await self.read()
        except StorageError as exc:
            log.warning("cannot read Redis's clock, this machine's is used: %s", exc)
        self._task = asyncio.create_task(self._loop(), name="bamboo-redis-clock")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.read()
            except StorageError as exc:  # Redis away: the last reading stands meanwhile
                log.debug("reading Redis's clock failed: %s", exc)
