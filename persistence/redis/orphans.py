"""The sessions of instances that died, parked by the survivors of a Redis store.

presence.lua records, at each join and refresh, the session in its instance's own
sorted set and the instance in ``<prefix>:{idx}:instances``, each by its deadline. An
instance whose deadline passed refreshed nothing for a whole heartbeat: it died (or
stalls). Each survivor's sweep (server/presence.py, a task beside its heartbeat, every
``heartbeat / 3``) claims such instances (``orphans.lua``, one heartbeat each, so that
survivors sweeping at once share them out), and calls ``presence.lua`` in mode
``park`` on their sessions, up to ``PARKED_AT_ONCE`` in one call: it
sweeps the dead connections out and, should none be left, writes the session
``disconnected`` in that same step, as the last connection's leave would have.

While it parks, a task beside it renews its claim every sixth of a heartbeat, one
heartbeat more, so that a dead instance too big to park within a heartbeat (what a
session costs: bench/dead_sweep.py, bench/RESULTS.md) stays its alone, not taken up
again by every survivor in turn; the sweep stops where its claim is found to be another's
(taken up after it ran out, or the instance refreshed: alive after all). The renewal
keeps time by itself: made before a batch once a third of a heartbeat had passed, it
let the claim run out whenever one batch took two thirds of a heartbeat (a test's
0.3 s heartbeat on a loaded machine). Redis runs a round trip's calls one after the
other, and a renewal only after the batch under way; and this process sends one only
between the batch's other steps. So the batches are sized by time: the first of
``PARKED_AT_LEAST`` parks, each next one twice as big after a batch quicker than a
24th of a heartbeat (up to ``PARKED_AT_ONCE``: at the default heartbeat, 30 s, in
four steps), half as big after one slower than a twelfth. On a machine whose load
was ten times its cores, a first batch of 256 took 0.48 s of a 0.3 s heartbeat, and
the event loop of the process waited up to 0.4 s for it; batches grown on a quiet
spell took 15 times longer at the next spike. The claim runs out only should
Redis, or this process, stall for five sixths of a heartbeat (a live instance's
presence, refreshed every third, runs out after two thirds), which no sweeper can
help.

Without this sweep, a session whose connections were all on the dead instance stayed
``active`` with no connection for ever unless a survivor held it (r325).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Final

from bamboo_session.tasks import detached

from ..errors import SessionNotFound, StorageError
from ..presence import Parked

if TYPE_CHECKING:
    from .storage import RedisStorage

log = logging.getLogger(__name__)

CLAIMED_AT_ONCE: Final = 16  # dead instances one sweep takes up
# Sessions of one parked in one round trip: the first batch, and the fewest.
PARKED_AT_LEAST: Final = 16
# The most: far less than a sixth of the default heartbeat (5 s) of Redis's time
# (bench/dead_sweep.py).
PARKED_AT_ONCE: Final = 256


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
    for name, deadline in zip(claimed[::2], claimed[1::2], strict=True):
        instance = _text(name)
        claim = _Claim(instance, _text(deadline), claimed_at)
        swept = await _sweep_instance(storage, claim)
        if swept:
            log.info("parked %d sessions of instance %s, which died", swept, instance)
        parked += swept
    return parked


@dataclasses.dataclass(slots=True)
class _Claim:
    instance: str
    deadline: str  # as orphans.lua set it: a deadline of another's is not this claim
    renewed_at: float  # time.monotonic() before the call that set it
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # the sweep's
    lost: bool = False  # found another's, alive after all, or gone


async def _sweep_instance(storage: RedisStorage, claim: _Claim) -> int:
    layout = storage.layout
    instance = claim.instance
    key = layout.instance_sessions(instance)
    renewing = detached(_keep(storage, claim), name="bamboo-redis-claim")
    parked, batch = 0, PARKED_AT_LEAST
    try:
        while not claim.lost:
            if renewing.done():
                renewing.result()  # raises what failed it (Redis away), else it is lost
                break
            began = time.monotonic()
            flat = await storage.redis.run("orphans", [key], ["take", batch])
            entries = [_text(entry) for entry in flat[::2]]
            parks = [p for p in map(storage.presence.orphan_park, entries) if p is not None]
            answers = await storage.presence.park_many(parks)
            for answer in answers:  # one that failed is not dropped: the next sweep's
                if isinstance(answer, StorageError) and not isinstance(answer, SessionNotFound):
                    raise answer
            parked += sum(1 for a in answers if isinstance(a, Parked) and a.wrote)
            # Dropped only once parked: a sweeper that dies first leaves them to the next.
            drop = ["drop", instance, *flat]
            await storage.redis.run("orphans", [key, layout.instances()], drop)
            if len(entries) < batch:
                break
            batch = _next_batch(batch, time.monotonic() - began, storage.config.heartbeat)
    finally:
        claim.done.set()  # a renewal under way ends first: none is cut short
        with contextlib.suppress(StorageError):  # the parks are done: their count stands
            await renewing
    return parked


def _next_batch(batch: int, took: float, heartbeat: float) -> int:
    """The size of the batch after one of ``batch`` parks that took ``took`` seconds:
    twice as big after one quicker than a 24th of a heartbeat, half as big after one
    slower than a twelfth (a renewal waits for it, in Redis and in this process: a
    batch eight times slower than the last, as a loaded machine's were at times,
    still leaves the claim two thirds of a heartbeat), within ``PARKED_AT_LEAST`` and
    ``PARKED_AT_ONCE``."""
    if took > heartbeat / 12:
        return max(PARKED_AT_LEAST, batch // 2)
    if took < heartbeat / 24:
        return min(PARKED_AT_ONCE, batch * 2)
    return batch


async def _keep(storage: RedisStorage, claim: _Claim) -> None:
    """Renews ``claim`` every sixth of a heartbeat until its sweep is done, or it is
    found lost."""
    every = storage.config.heartbeat / 6
    while True:
        wait = claim.renewed_at + every - time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.0)):
                await claim.done.wait()
        if claim.done.is_set():
            return
        began = time.monotonic()
        renewed = await storage.redis.run(
            "orphans",
            [storage.layout.instances()],
            ["renew", _heartbeat_ms(storage), claim.instance, claim.deadline],
        )
        if renewed is None:
            claim.lost = True
            return
        claim.deadline, claim.renewed_at = _text(renewed), began


def _heartbeat_ms(storage: RedisStorage) -> int:
    return round(storage.config.heartbeat * 1000)
