"""The sessions of instances that died, parked by the survivors of a Redis store.

presence.lua records, at each join and refresh, the session in its instance's own
sorted set and the instance in ``<prefix>:{idx}:instances``, each by its deadline. An
instance whose deadline passed refreshed nothing for a whole heartbeat: it died (or
stalls). Each survivor's sweep (server/presence.py, a task beside its heartbeat, every
``heartbeat / 3``) claims such instances (``orphans.lua``, one heartbeat each, so that
survivors sweeping at once share them out), and calls ``presence.lua`` in mode
``park`` on each of their sessions, ``PARKED_AT_ONCE`` in a round trip: it sweeps the
dead connections out and, should none be left, writes the session ``disconnected`` in
that same step, as the last connection's leave would have. Before a batch, once a
third of a heartbeat would have passed since it last did by the time the batch ends
(the last batch's time foretells the next's), the sweeper renews its claim, one
heartbeat more, so that a dead instance too big to park within a heartbeat (0.1 to
0.35 ms a session: 10,000 take 1 to 3.5 s) stays its alone, not taken up again by
every survivor in turn; it stops where its claim is found to be another's (taken up
after it ran out, or the instance refreshed: alive after all). A batch that took
more than a sixth of a heartbeat (a starved process, a slow Redis, a short
heartbeat) halves the batches for the rest of the sweep: the claim runs out only
should one batch take two thirds of a heartbeat more than the one before (a test's
heartbeat of 0.3 s on a loaded machine: batches of 256 took over 0.2 s, and the
claim lapsed). Without this sweep, a session whose connections were all on the dead
instance stayed ``active`` with no connection for ever unless a survivor held it
(r325).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .storage import RedisStorage

log = logging.getLogger(__name__)

CLAIMED_AT_ONCE: Final = 16  # dead instances one sweep takes up
# Sessions of one parked in one round trip at first: 25 to 90 ms of Redis's time, far
# less than a sixth of the default heartbeat (5 s); fewer once a batch took longer.
PARKED_AT_ONCE: Final = 256
PARKED_AT_LEAST: Final = 16  # the smallest batch: a round trip must carry some


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def sweep_dead_instances(storage: RedisStorage) -> int:
    """Park the sessions of the instances whose deadline passed; how many it wrote
    ``disconnected`` (0 where another survivor did, or a connection is left)."""
    claimed_at = time.monotonic()  # before it: the deadline set is at least this late
    claimed = await storage.redis.run(
        "orphans",
        [storage.layout.instances()],
        ["claim", _heartbeat_ms(storage), CLAIMED_AT_ONCE],
    )
    parked = 0
    batches = _Batches(PARKED_AT_ONCE)
    for name, deadline in zip(claimed[::2], claimed[1::2], strict=True):
        instance = _text(name)
        claim = _Claim(instance, _text(deadline), claimed_at)
        swept = await _sweep_instance(storage, claim, batches)
        if swept:
            log.info("parked %d sessions of instance %s, which died", swept, instance)
        parked += swept
    return parked


@dataclasses.dataclass(slots=True)
class _Claim:
    instance: str
    deadline: str  # as orphans.lua set it: a deadline of another's is not this claim
    renewed_at: float  # time.monotonic() before the call that set it


@dataclasses.dataclass(slots=True)
class _Batches:
    """How many sessions a sweep parks in a round trip, and how long the last took."""

    size: int
    took: float = 0.0  # seconds, from its take to its drop

    def record(self, took: float, heartbeat: float) -> None:
        self.took = took
        if took > heartbeat / 6 and self.size > PARKED_AT_LEAST:
            self.size = max(PARKED_AT_LEAST, self.size // 2)


async def _sweep_instance(storage: RedisStorage, claim: _Claim, batches: _Batches) -> int:
    layout = storage.layout
    instance = claim.instance
    key = layout.instance_sessions(instance)
    parked = 0
    while True:
        # Another's now, alive after all, or done.
        if not await _renewed(storage, claim, batches.took):
            return parked
        began, size = time.monotonic(), batches.size
        flat = await storage.redis.run("orphans", [key], ["take", size])
        entries = [_text(entry) for entry in flat[::2]]
        calls = [c for c in map(storage.presence.park_call, entries) if c is not None]
        answers = await storage.redis.run_many("presence", calls)
        parked += sum(1 for a in answers if isinstance(a, list) and int(a[1]) == 1)
        # Dropped only once parked: a sweeper that dies first leaves them to the next.
        await storage.redis.run("orphans", [key, layout.instances()], ["drop", instance, *flat])
        if len(entries) < size:
            return parked
        batches.record(time.monotonic() - began, storage.config.heartbeat)


async def _renewed(storage: RedisStorage, claim: _Claim, next_batch: float) -> bool:
    """Whether the claim still holds, renewed if a third of a heartbeat will have
    passed since by the end of a batch as long as ``next_batch`` seconds."""
    began = time.monotonic()
    if began + next_batch - claim.renewed_at < storage.config.heartbeat / 3:
        return True
    renewed = await storage.redis.run(
        "orphans",
        [storage.layout.instances()],
        ["renew", _heartbeat_ms(storage), claim.instance, claim.deadline],
    )
    if renewed is None:
        return False
    claim.deadline, claim.renewed_at = _text(renewed), began
    return True


def _heartbeat_ms(storage: RedisStorage) -> int:
    return round(storage.config.heartbeat * 1000)
