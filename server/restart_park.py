"""Parking, at a server's start, the sessions its store says are attached when no
process can hold a connection to them: on a store one process holds (JSONL, SQLite,
memory), a session the store holds ``active`` or ``idle`` at the start was left so
by a server that died (``kill -9``, a crash, a power cut; the JSONL store also
writes a ``disconnected`` lazily, so a kill loses it). It becomes ``disconnected``,
a state write that is no activity: its ``last_activity_at`` and ``expires_at`` stay.

A store several processes share (Redis) parks a dead instance's sessions by its
presence sweep instead (persistence/redis/orphans.py), never by this: another
instance's connections may be attached. Offline tools do not park either.

The sessions are listed and parked in batches, oldest write first, each move fenced by
the session's epoch and by the ``updated_at`` listed: a session written since (an
attach, once the server listens) is left as that write left it, and leaves the front
of the listing. The server listens once they are all parked, or after ``FOREGROUND``
seconds of it at most; the batches left are parked in a task meanwhile (100,000
sessions: bench/restart_park.py, bench/RESULTS.md). An actor spawned before its
session's turn holds it ``disconnected`` already (server/status.py ``held_state``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import structlog

from bamboo_session.persistence.base import (
    SessionExpired,
    SessionFilter,
    SessionNotFound,
    SortBy,
    SortOrder,
    Storage,
    StorageError,
)
from bamboo_session.protocol.errors import InvalidTransition
from bamboo_session.protocol.models import SessionMetadata, SessionState
from bamboo_session.tasks import cancel_and_wait

log = structlog.get_logger("bamboo_session.restart_park")

BATCH = 1000  # sessions listed and parked at once: one SQLite group commit, about
FOREGROUND = 0.5  # seconds of parking a start waits for before the server listens

PARKED, EXPIRED, LEFT = "parked", "expired", "left"  # what became of a session listed

_LEFT_ATTACHED = (SessionState.ACTIVE, SessionState.IDLE)


class RestartPark:
    """The park of what a dead server left attached, begun before the server listens
    and finished, past ``FOREGROUND``, in a task of its own."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.parked = 0
        self.started = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    async def begin(self, foreground: float = FOREGROUND) -> None:
        """Parks for up to ``foreground`` seconds; the batches left go on in a task."""
        batches = self._batches()
        deadline = time.monotonic() + foreground
        async for _ in batches:
            if time.monotonic() >= deadline:
                self.task = asyncio.create_task(self._finish(batches), name="bamboo-park")
                return
        self._done()

    async def stop(self) -> None:
        """Ends the batches left, if any (the server stops): the next start parks them."""
        await cancel_and_wait(self.task)

    async def _finish(self, batches: AsyncIterator[None]) -> None:
        async for _ in batches:
            await asyncio.sleep(0)  # the loop's other work between batches
        self._done()

    async def _batches(self) -> AsyncIterator[None]:
        """One step per batch parked. A store that fails (or is read-only) ends them:
        logged; the sessions left are parked as their actors load, or at the next
        start."""
        # The store's clock, which gives every write after this read a later time,
        # whatever the wall clock does (a machine that boots with its clock behind).
        self.started, since = time.monotonic(), self.storage.now()
        try:
            for state in _LEFT_ATTACHED:
                async for parked in _park_state(self.storage, state, since):
                    self.parked += parked
                    yield
        except StorageError as exc:
            log.warning("parking the sessions a dead server left attached failed", error=str(exc))
        except Exception:  # a defect: told, and the server goes on without the park
            log.exception("parking the sessions a dead server left attached failed")

    def _done(self) -> None:
        if self.parked:
            log.info(
                "parked the sessions a dead server left attached",
                sessions=self.parked,
                seconds=round(time.monotonic() - self.started, 3),
            )


async def _park_state(storage: Storage, state: SessionState, since: datetime) -> AsyncIterator[int]:
    """Parks the sessions in ``state`` written by ``since``, a batch at a time (how
    many each parked). Those it could not park (expired: cleanup removes them) stay in
    the listing, in front: the next page starts past them."""
    skipped = 0
    while True:
        page = await storage.list_sessions(
            SessionFilter(
                state=state,
                sort_by=SortBy.UPDATED_AT,
                sort_order=SortOrder.ASC,
                offset=skipped,
                limit=BATCH,
            )
        )
        stale = [metadata for metadata in page.sessions if metadata.updated_at <= since]
        if not stale:
            return
        outcomes = await asyncio.gather(*(_park(storage, metadata) for metadata in stale))
        skipped += outcomes.count(EXPIRED)
        yield outcomes.count(PARKED)
        if len(stale) < len(page.sessions):
            return  # the rest were written since the start: not left by the dead


async def _park(storage: Storage, metadata: SessionMetadata) -> str:
    """``metadata``'s session parked (PARKED); else EXPIRED (it stays in the listing,
    as it was) or LEFT (deleted, or written since the listing: no longer in front)."""
    try:
        stored = await storage.update_session_state(
            metadata.id,
            SessionState.DISCONNECTED,
            epoch=metadata.epoch,
            unless_updated_since=metadata.updated_at,
        )
    except SessionExpired:
        return EXPIRED  # cleanup's to remove
    except (SessionNotFound, InvalidTransition):
        return LEFT  # deleted, or closed since it was listed (r345)
    return PARKED if stored.state == SessionState.DISCONNECTED else LEFT
