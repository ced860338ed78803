"""Whether a session read as expired lives again once its actor has stored what it
took before: on a JSONL store an append taken before the session's TTL ran out is
stored and acknowledged, and renews the session as it is written, which may be after
the TTL ran out. A ``hello`` with ``create`` asks this before it ends the actor of the
expired session it would replace (ActorRegistry.end_expired): the actor's peers are
then not closed 4404 ``session expired`` for a session their append kept alive."""

from __future__ import annotations

import asyncio

from bamboo_session.protocol.models import SessionMetadata, SessionState

from .actor import SessionActor
from .commands import Settle
from .pages import PageReads


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
