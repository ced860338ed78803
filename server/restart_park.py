"""Parking, at a server's start, the sessions its store says are attached when no
process can hold a connection to them: on a store one process holds (JSONL, SQLite,
memory), a session the store holds ``active`` or ``idle`` at the start was left so
by a server that died (``kill -9``, a crash, a power cut; the JSONL store also
writes a ``disconnected`` lazily, so a kill loses it). It becomes ``disconnected``,
a state write that is no activity: its ``last_activity_at`` and ``expires_at`` stay.

A store several processes share (Redis) parks a dead instance's sessions by its
presence sweep instead (persistence/redis/orphans.py), never by this: another
instance's connections may be attached. Offline tools do not park either.

The store parks them itself (``ParksAttached``, persistence/capabilities.py), a batch
at a time, each move checked in the same step against the session's ``updated_at``: a
session written since the park began (an attach, once the server listens) is left as
that write left it. The server listens once they are all parked, or after
``FOREGROUND`` seconds of it at most; the batches left are parked in a task meanwhile
(100,000 sessions: bench/restart_park.py, bench/RESULTS.md). An actor spawned before
its session's turn holds it ``disconnected`` already (server/status.py ``held_state``).
A store that cannot park (none of those a process holds alone) is not parked.

A graceful stop parks the same way what it leaves attached (``park_at_stop``, once
every actor retired and before the store closes): its closes (1012) write no state,
and the store would otherwise say ``active`` until the next start, to offline tools
and to that start's log, which took the stop for a death. What a park at the start
left unparked when the server stopped goes with it. Up to ``STOP_MOST`` sessions or
``STOP_SECONDS``: past that the rest is the next start's, as before. Only where the
start parked (``serve``): an embedder's server parks nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

import structlog

from bamboo_session.persistence.base import Storage, StorageError
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.tasks import cancel_and_wait

log = structlog.get_logger("bamboo_session.restart_park")

BATCH = 1000  # sessions parked at once: one SQLite group commit, and one turn of the loop
FOREGROUND = 0.5  # seconds of parking a start waits for before the server listens
# A stop parks this much at most: on JSONL each parked session is a checkpoint its
# close writes (100,000 took a stop 0.85 -> 43 s, SQLite's park 12 s: bench/RESULTS.md),
# and a stop must end well within a supervisor's wait (docker stop's 10 s).
STOP_MOST = 5 * BATCH
STOP_SECONDS = 1.0
AT_START = "the sessions a dead server left attached"
AT_STOP = "the sessions left attached at the stop"


class RestartPark:
    """The park of what a dead server left attached, begun before the server listens
    and finished, past ``FOREGROUND``, in a task of its own."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.parked = 0
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.begun = False

    async def begin(self, foreground: float = FOREGROUND) -> None:
        """Parks for up to ``foreground`` seconds; the batches left go on in a task."""
        self.begun = True
        batches = self._batches()
        deadline = time.monotonic() + foreground
        async for _ in batches:
            if time.monotonic() >= deadline:
                self.task = asyncio.create_task(self._finish(batches), name="bamboo-park")
                return
        self._done()

    async def stop(self) -> None:
        """Ends the batches left, if any (the server stops): :meth:`park_at_stop`, or
        the next start, parks them."""
        await cancel_and_wait(self.task)

    async def park_at_stop(self) -> None:
        """Parks what the server leaves attached as it stops (after :meth:`stop`, once
        no actor is left), up to ``STOP_MOST`` sessions or ``STOP_SECONDS``; only if
        :meth:`begin` ran. What is left is the next start's park, as after a kill."""
        if not self.begun:
            return
        self.parked, deadline, cut = 0, time.monotonic() + STOP_SECONDS, False
        async with contextlib.aclosing(self._batches(AT_STOP)) as batches:
            async for _ in batches:
                if self.parked >= STOP_MOST or time.monotonic() >= deadline:
                    cut = True
                    break
        self._done(AT_STOP, stopped_at_bound=cut)

    async def _finish(self, batches: AsyncIterator[None]) -> None:
        async for _ in batches:
            await asyncio.sleep(0)  # the loop's other work between batches
        self._done()

    async def _batches(self, what: str = AT_START) -> AsyncGenerator[None, None]:
        """One step per batch parked. A store that fails (or is read-only) ends them:
        logged; the sessions left are parked as their actors load, or at the next
        start."""
        if not isinstance(self.storage, ParksAttached):
            return
        # The store's clock, which gives every write after this read a later time,
        # whatever the wall clock does (a machine that boots with its clock behind).
        self.started, since = time.monotonic(), self.storage.now()
        try:
            async for parked in self.storage.park_attached(since, BATCH):
                self.parked += parked
                yield
        except StorageError as exc:
            log.warning(f"parking {what} failed", error=str(exc))
        except Exception:  # a defect: told, and the server goes on without the park
            log.exception(f"parking {what} failed")

    def _done(self, what: str = AT_START, **more: object) -> None:
        if self.parked:
            log.info(
                f"parked {what}",
                sessions=self.parked,
                seconds=round(time.monotonic() - self.started, 3),
                **more,
            )
