"""An expired session a ``hello`` with ``create`` replaces: its live actor ended
first (``end_expired``), unless it lives again once the actor has stored what it took
before (``renewed_meanwhile``). On a JSONL store an append taken before the session's
TTL ran out is stored and acknowledged, and renews the session as it is written, which
may be after the TTL ran out: the actor's peers are then not closed 4404 ``session
expired`` for a session their append kept alive."""

from __future__ import annotations

import asyncio

from bamboo_session.persistence.base import SessionExists
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import SessionMetadata, SessionState

from .actor import SessionActor
from .actors import ActorRegistry
from .commands import Settle, Stop
from .pages import PageReads


async def end_expired(actors: ActorRegistry, expired: SessionMetadata, reads: PageReads) -> None:
    """The live actor of ``expired`` (parked, or with peers it has not closed yet)
    ends as at its expiry (``closed`` and 4404, ``session expired``), and has
    finished, before a new session replaces it: the new one is then the one in
    memory. An actor of another epoch (a concurrent creation's session), or whose
    appends under way renewed the session (SessionExists), is left alone. Within
    the read deadline (StoreTimeout, nothing created)."""
    deadline = reads.deadline()
    actor = actors.get(expired.id)
    if actor is not None and actor.room.epoch == expired.epoch:
        if await renewed_meanwhile(actor, expired, reads, deadline):
            raise SessionExists(f"session {expired.id!r} was renewed by an append")
        # Retired, closing its connections once it takes its Stop (after the command
        # it carries out), by the deadline.
        stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        actors.retire(actor, Stop(CloseCode.NOT_FOUND, "session expired", stopped))
        await reads.within(deadline, asyncio.wait([stopped]))
    await actors.await_retired(expired.id, deadline)


async def renewed_meanwhile(
    actor: SessionActor, expired: SessionMetadata, reads: PageReads, deadline: float
) -> bool:
    """Whether the session ``expired`` (as read, of ``actor``'s epoch) lives again once
    the actor has stored what it took before this call: not expired, same epoch. By
    ``deadline`` (StoreTimeout: the actor goes on, and its look at the session ends
    it if it stays expired). Never one in the state ``expired``: nothing renews it."""
    if expired.state == SessionState.EXPIRED:
        return False
    settled = asyncio.get_running_loop().create_future()
    actor.post(Settle(settled))
    await reads.within(deadline, asyncio.wait([settled]))
    storage = actor.storage
    stored = await reads.lookup(lambda: storage.get_metadata(expired.id), deadline)
    if stored is None or stored.epoch != expired.epoch:
        return False
    return not stored.is_expired(storage.now())
