"""Session creations under way, by id, and the get-or-create that shares them:
concurrent get-or-creates of one session share one creation, whose outcome is taken
even when every caller gave up on it. An expired session counts as missing: the
creation replaces it (the storage contract's ``replace_expired``)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog

from bamboo_session.persistence.base import SessionExists, SessionExpired, SessionNotFound
from bamboo_session.protocol.models import Session, SessionMetadata

from .failures import is_expected
from .pages import PageReads

log = structlog.get_logger("bamboo_session.manager")

# (session_id, deadline) -> the session's stored metadata, None when it is not stored
ReadMetadata = Callable[[str, float | None], Awaitable[SessionMetadata | None]]
# the expired session it replaces, or None -> the new session, stored
Create = Callable[[SessionMetadata | None], Coroutine[Any, Any, Session]]


class Creations:
    """The creations under way (``SessionManager.ensure_session``), one per id."""

    def __init__(self, read: ReadMetadata, reads: PageReads, now: Callable[[], datetime]) -> None:
        self._read = read
        self._reads = reads
        self._now = now  # the store's clock, which the sessions' expiry is of
        self._under_way: dict[str, asyncio.Future[Session]] = {}

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._under_way

    async def get_or_create(
        self,
        session_id: str,
        create: Create,
        deadline: float | None,
    ) -> SessionMetadata:
        """The session's metadata, once ``create(expired)`` stored it if it was not
        stored, or had expired (``expired``: its metadata, which the creation replaces).
        The reads, and the wait for another caller's creation of the same session, end
        by ``deadline`` when given (StoreTimeout); the creation's own write is not a
        read, and the read after it has a deadline of its own."""
        existing = await self._read(session_id, deadline)
        # Concurrent callers for one id share one creation (the storage refuses the
        # others with SessionExists before the winner's is readable): wait, read again.
        # Again and again: one that failed leaves the session missing to every caller
        # that waited for it, and the first of them to read it starts the next one.
        while self._missing(existing) and (creating := self._under_way.get(session_id)) is not None:
            theirs = asyncio.wait([creating])
            await (theirs if deadline is None else self._reads.within(deadline, theirs))
            existing = await self._read(session_id, deadline)
        if existing is not None and not existing.is_expired(self._now()):
            return existing
        creation = self._start(session_id, create(existing))
        with contextlib.suppress(SessionExists):  # another caller created it first
            await asyncio.shield(creation)
        # The creation's write is not a read: the read after it has a deadline of its
        # own, else a creation slower than ``deadline`` would fail once it was done.
        found = await self._read(session_id, None)
        if found is None:  # created and deleted in between: let the caller retry
            raise SessionNotFound(session_id)
        if found.is_expired(self._now()):  # created by another caller, and expired since
            raise SessionExpired(session_id)
        return found

    def _start(
        self, session_id: str, creation: Coroutine[Any, Any, Session]
    ) -> asyncio.Future[Session]:
        """Runs ``creation`` as the one under way for ``session_id`` until it ends."""
        task = asyncio.ensure_future(creation)
        self._under_way[session_id] = task
        task.add_done_callback(functools.partial(self._ended, session_id))
        return task

    def _ended(self, session_id: str, creation: asyncio.Future[Session]) -> None:
        """A creation's outcome, taken whether or not its caller still waits (a caller
        cancelled at a stop does not): its failure, nobody's, was logged by asyncio
        with a traceback as "Task exception was never retrieved"."""
        del self._under_way[session_id]
        if creation.cancelled():
            return
        failure = creation.exception()
        if failure is not None and not is_expected(failure):
            log.error("creating a session failed", session_id=session_id, exc_info=failure)

    def _missing(self, metadata: SessionMetadata | None) -> bool:
        """Whether a creation would make the session: it is not stored, or has expired."""
        return metadata is None or metadata.is_expired(self._now())
