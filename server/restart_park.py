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
left unparked when the server stopped goes with it. Up to ``--max-parked-at-stop``
sessions (``STOP_MOST`` by default) or ``STOP_SECONDS``: past that the rest is the
next start's, as before, and the log says so (``stopped_at_bound``) only if the store
still holds some. Only where the start parked (``serve``): an embedder's server parks
nothing. A batch the store does not finish (a disk that hangs) holds the stop
``STOP_BOUND`` seconds at most: the park is then given up (and logged), for the next
start to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime

import structlog

from bamboo_session.persistence.base import Storage, StorageError
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.tasks import cancel_and_wait, ended_within

from .manager_config import DEFAULT_MAX_PARKED_AT_STOP

log = structlog.get_logger("bamboo_session.restart_park")

BATCH = 1000  # sessions parked at once: one SQLite group commit, and one turn of the loop
FOREGROUND = 0.5  # seconds of parking a start waits for before the server listens
STOP_MOST = DEFAULT_MAX_PARKED_AT_STOP  # a stop's, unless --max-parked-at-stop (why: there)
STOP_SECONDS = 1.0
STOP_BOUND = STOP_SECONDS + 2.0  # and a last batch's time, on a store that answers
AT_START = "the sessions a dead server left attached"
AT_STOP = "the sessions left attached at the stop"


class RestartPark:
    """The park of what a dead server left attached, begun before the server listens
    and finished, past ``FOREGROUND``, in a task of its own."""

    def __init__(self, storage: Storage, stop_most: int = STOP_MOST) -> None:
        self.storage = storage
        self.stop_most = stop_most  # --max-parked-at-stop
        self.parked = 0
        self.started = time.monotonic()
        self.since: datetime | None = None  # the store's time the park's fence is at
        self.task: asyncio.Task[None] | None = None
        self.begun = False
        # Called as the stop's park begins, if one does: a phase of the stop of its own.
        self.on_stop_park: Callable[[], None] = lambda: None

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
        """:meth:`parked_at_stop`, given up after ``STOP_BOUND`` seconds (its store's
        call cancelled, and not waited for: a disk that hangs may never answer)."""
        parking = asyncio.ensure_future(self.parked_at_stop())
        if not await ended_within(parking, STOP_BOUND):
            parking.cancel()
            log.warning(f"parking {AT_STOP} did not end in time", seconds=STOP_BOUND)
        elif not parking.cancelled() and (error := parking.exception()) is not None:
            raise error

    async def parked_at_stop(self) -> None:
        """Parks what the server leaves attached as it stops (after :meth:`stop`, once
        no actor is left), up to ``stop_most`` sessions (in batches of ``BATCH`` at
        most) or ``STOP_SECONDS``; only if :meth:`begin` ran. What is left is the next
        start's park, as after a kill: ``stopped_at_bound`` says whether any is, asked
        of the store once the bound was reached (a park that reached it with the last
        session attached left none)."""
        if not self.begun or not isinstance(self.storage, ParksAttached):
            return
        self.on_stop_park()
        self.parked, deadline, cut = 0, time.monotonic() + STOP_SECONDS, True
        self.since = None  # (the start's fence is not the stop's)
        if self.stop_most > 0:
            batch = min(BATCH, self.stop_most)
            async with contextlib.aclosing(self._batches(AT_STOP, batch)) as batches:
                async for _ in batches:
                    if self.parked >= self.stop_most or time.monotonic() >= deadline:
                        break
                    # The loop's other work between batches, as the start's task does:
                    # on JSONL 100,000 attached made the stop's 5 batches one stall of
                    # 67 ms (bench/RESULTS.md).
                    await asyncio.sleep(0)
                else:
                    cut = False  # every batch ran (or the store failed: logged)
        self._done(AT_STOP, stopped_at_bound=cut and await self._left_attached())

    async def _left_attached(self) -> bool:
        """Whether the store still holds a session the stop's park would have parked
        (a failure to tell: logged, and taken for yes)."""
        assert isinstance(self.storage, ParksAttached)
        since = self.since if self.since is not None else self.storage.now()
        try:
            return await self.storage.attached_left(since)
        except StorageError as exc:
            log.warning("could not tell whether the stop left sessions attached", error=str(exc))
        except Exception:  # a defect: told, and the stop goes on
            log.exception("could not tell whether the stop left sessions attached")
        return True

    async def _finish(self, batches: AsyncIterator[None]) -> None:
        async for _ in batches:
            await asyncio.sleep(0)  # the loop's other work between batches
        self._done()

    async def _batches(
        self, what: str = AT_START, batch: int | None = None
    ) -> AsyncGenerator[None, None]:
        """One step per batch parked. A store that fails (or is read-only) ends them:
        logged; the sessions left are parked as their actors load, or at the next
        start."""
        if not isinstance(self.storage, ParksAttached):
            return
        # The store's clock, which gives every write after this read a later time,
        # whatever the wall clock does (a machine that boots with its clock behind).
        self.started, self.since = time.monotonic(), self.storage.now()
        try:
            async for parked in self.storage.park_attached(self.since, batch or BATCH):
                self.parked += parked
                yield
        except StorageError as exc:
            log.warning(f"parking {what} failed", error=str(exc))
        except Exception:  # a defect: told, and the server goes on without the park
            log.exception(f"parking {what} failed")

    def _done(self, what: str = AT_START, **more: object) -> None:
        if self.parked or any(more.values()):
            log.info(
                f"parked {what}",
                sessions=self.parked,
                seconds=round(time.monotonic() - self.started, 3),
                **more,
            )
