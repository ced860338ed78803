"""Session creations under way, by id, and the get-or-create that shares them:
concurrent get-or-creates of one session share one creation, whose outcome is taken
even when every caller gave up on it. An expired session counts as missing: the
creation replaces it (the storage contract's ``replace_expired``). A creation for an
attach (``admitted``) is refused before anything is stored when the attach could not
be served, or the connection's quotas say no."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Protocol

import structlog

from bamboo_session.persistence.base import (
    OwnerCaps,
    SessionExists,
    SessionExpired,
    SessionNotFound,
)
from bamboo_session.protocol.models import Session, SessionMetadata

from .actors import ActorRegistry
from .failures import is_expected
from .manager_config import SessionManagerConfig
from .pages import PageReads
from .quotas import Admission, check_fields
from .renewals import end_expired

log = structlog.get_logger("bamboo_session.manager")

# (session_id, deadline) -> the session's stored metadata, None when it is not stored
ReadMetadata = Callable[[str, float | None], Awaitable[SessionMetadata | None]]
# the expired session it replaces, or None -> the new session, stored
Create = Callable[[SessionMetadata | None], Coroutine[Any, Any, Session]]


class StoreSession(Protocol):
    """``SessionManager.create_session``, as a creation for an attach calls it."""

    def __call__(
        self,
        user_id: str | None,
        title: str | None,
        *,
        session_id: str | None,
        replace_expired: bool,
        owner_caps: OwnerCaps | None,
    ) -> Awaitable[Session]: ...


class Creations:
    """The creations under way (``SessionManager.ensure_session``), one per id."""

    def __init__(
        self,
        config: SessionManagerConfig,
        actors: ActorRegistry,
        store: StoreSession,
        read: ReadMetadata,
        reads: PageReads,
        now: Callable[[], datetime],
    ) -> None:
        self._config = config
        self._actors = actors
        self._store = store
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

    async def admitted(
        self,
        admit: Admission | None,
        user_id: str | None,
        title: str | None,
        *,
        session_id: str | None = None,
        replacing: SessionMetadata | None = None,
    ) -> Session:
        """A session for an attach (server/handshake.py): refused before anything is
        stored when no actor could be spawned for it (a client refused with 1013
        retries, and each retry would leave an orphan), or when ``admit`` says no.
        ``replacing``: the expired session of ``session_id`` it takes the place of,
        whose live actor ends first; ``admit`` is told of it (its owner's counts stay).
        The store counts the owner's sessions in the creation when ``admit`` gives it
        caps to (a store several processes share). FieldTooLong first: a field over
        its limit takes no room, no creation-rate token and no per-owner lock (keyed by
        ``user_id``), and a retry would fail the same."""
        check_fields(self._config, user_id, title, None)
        self._actors.check_room()
        admission = admit(user_id, replacing) if admit is not None else contextlib.nullcontext()
        async with admission as owner_caps:
            if replacing is not None:
                await end_expired(self._actors, replacing, self._reads)
            return await self._store(
                user_id,
                title,
                session_id=session_id,
                replace_expired=replacing is not None,
                owner_caps=owner_caps,
            )

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
