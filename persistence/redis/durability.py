"""The watch on Redis's persistence settings after a writable store's open: a Redis
found durable then (``appendonly yes``, ``appendfsync always``) may be switched later
(``CONFIG SET appendfsync everysec``, ``appendonly no``), and its next restart may
then lose writes it acknowledged while keeping every epoch, so that the lost events'
seqs would go to other events under an epoch clients hold (the wire contract's
Resume forbids it).

Every ``heartbeat / 3`` seconds (the presence heartbeat's pace; 10 s by default)
one ``CONFIG GET`` per setting reads what Redis runs with; nothing is read per append.
When Redis turns lossy, the generation record is marked lossy for the run
(generation.py ``record_lossy``), so that its next restart changes every session's
epoch, and one warning says what changed and what to set; this instance also takes
Redis for lossy from then on, so its first look at the next run changes the token
even if the mark did not survive, or could not be written (Redis away mid-look: the
next look writes it, and only then warns). The store keeps serving: the epoch change keeps the
contract, and a refusal of every append, across every instance, for a setting an
operator changed on purpose would be an outage of its own (the refusal at the open
stays: a deploy that has not started yet loses nothing). The run stays recorded
lossy even if Redis turns durable again: what was acknowledged meanwhile may not be
on disk. ``may_lose_writes`` is what /metrics shows (``bamboo_store_may_lose_writes``).

Each look also reads ``maxmemory-policy`` (one more ``CONFIG GET``, eviction.py): a
Redis switched to an ``allkeys-*`` policy after the open drops sessions' keys, and
the events it acknowledged with them, at its ``maxmemory``, which no epoch change
makes good. A change into such a policy (or from one to another) is warned of once,
at the look that finds it; ``evicting`` says it to ``/readyz`` (503 while it holds:
an evicting Redis is not a store the server can promise on) and to the gauge; a
change back is said at INFO.

Where Redis refuses INFO (an ACL), the turn is taken all the same (the gauge says 1)
but there is no run to record it against: one warning says that its next restart
keeps the epochs, and what to allow (a writable store does not open on a lossy Redis
that refuses INFO: storage.py).

What this cannot see: a loss between the switch and the next look (the interval is
that window), and, with ``appendonly no``, a restart that no instance which saw the
switch outlives: the mark, written after the switch, is lost with the events
(tests/test_redis_durability.py shows both sides).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from bamboo_session.tasks import detached

from ..base import StorageError
from .client import stop_task
from .eviction import eviction_danger, read_policy
from .server_checks import persistence_danger, read_persistence

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .generation import Generation

log = logging.getLogger(__name__)

SHORTEST_INTERVAL: Final = 0.1  # seconds: a heartbeat of 0 must not spin
UNCHECKABLE: Final = (
    "Redis now refuses CONFIG GET, so the store cannot tell whether it keeps the writes "
    "it acknowledged; taken as one that may lose them"
)

# Where Redis refuses INFO (an ACL) there is no run to record the turn against: said
# once, at the turn, since nothing the watch does later can keep the epochs right.
UNSEEN_RESTART: Final = (
    "Redis refuses INFO to the store's user (an ACL), so the store cannot tell when it "
    "restarts: its next restart may lose writes it acknowledged and keep every epoch "
    "(clients would resume onto a log cut short). Allow INFO (ACL +info), or set "
    "appendonly yes and appendfsync always again"
)


class DurabilityWatch:
    """Reads Redis's persistence settings every ``interval`` seconds, and records a
    turn to lossy in the store's generation."""

    def __init__(self, client: Redis, generation: Generation, heartbeat: float) -> None:
        self._client = client
        self._generation = generation
        self.interval = max(heartbeat / 3, SHORTEST_INTERVAL)
        self._task: asyncio.Task[None] | None = None
        self.looks = 0  # looks done to the end (the settings read, a turn acted on)
        self.turns = 0  # times Redis was seen turning lossy after the open, and recorded
        self._unrecorded = False  # a turn seen whose mark in the record failed so far
        # What Redis's maxmemory-policy may do to the store's keys, as last seen (None:
        # it keeps them, or was never said): set by the open, then by each look.
        self.evicting: str | None = None

    @property
    def may_lose_writes(self) -> bool:
        """Redis, as last seen, may lose writes it acknowledged (or cannot say): by its
        persistence settings, or by evicting the store's keys."""
        return self._generation.lossy or self.evicting is not None

    def start(self) -> None:
        self._task = detached(self._loop(), name="bamboo-redis-durability")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def check(self) -> None:
        """One look at the settings; a turn either way is acted on once. A turn to
        lossy whose mark fails (Redis away mid-look, scripts refused) raises, and is
        still taken: this instance keeps Redis for lossy, and the next look marks the
        record, then warns."""
        settings = await read_persistence(self._client)
        danger = UNCHECKABLE if settings is None else persistence_danger(settings)
        if danger is not None:
            await self._turned_lossy(danger)
        elif self._generation.lossy:
            await self._turned_durable()
        await self._look_at_eviction()
        self.looks += 1

    async def _look_at_eviction(self) -> None:
        """Reads the policy; a change of what it may do is said once. Where CONFIG GET
        is refused, what was seen last stands (the open's look, by INFO)."""
        policy = await read_policy(self._client)
        if policy is None:
            return
        danger = eviction_danger(policy)
        if danger == self.evicting:
            return
        if danger is not None:
            log.warning("%s (changed after the open; /readyz answers 503 meanwhile)", danger)
        else:
            log.info("Redis keeps the store's keys again (maxmemory-policy %s)", policy)
        self.evicting = danger

    async def _turned_lossy(self, danger: str) -> None:
        if not self._generation.lossy:
            self._unrecorded = True
        if not self._unrecorded:
            return
        await self._generation.record_lossy()  # takes Redis for lossy even if it fails
        self._unrecorded = False
        self.turns += 1
        if not self._generation.sees_restarts:
            log.warning("%s. %s", danger, UNSEEN_RESTART)
            return
        log.warning(
            "%s. Redis kept every write it acknowledged when the store last looked; "
            "its next restart now changes every session's epoch (clients resume "
            "with resumed: false)",
            danger,
        )

    async def _turned_durable(self) -> None:
        if self._unrecorded:  # what was acknowledged meanwhile may not be on disk
            await self._generation.record_lossy()
            self._unrecorded = False
        self._generation.lossy = False
        log.info(
            "Redis keeps the writes it acknowledged again; its next restart still "
            "changes every session's epoch, as this run of Redis may have lost some"
        )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except StorageError as exc:  # Redis away: the next look tries again
                log.debug(
                    "a look at Redis's persistence settings failed (the next tries again): %s", exc
                )
            except Exception:
                # A fault of ours, not Redis's: said loudly, and the watch goes on, since a
                # watch that ended would miss a turn to lossy (and the epochs it changes).
                log.exception("a look at Redis's persistence settings failed unexpectedly")
