"""What a session's actor takes from the store when the state it holds may no longer be
the session's: after a state change whose outcome the store could not tell
(OutcomeUnknown: its reply lost, Redis only), and when a look found the session
closed by another process whose notice did not come. Both run between the actor's
batches (server/control.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.feed import CLOSED
from bamboo_session.protocol.models import SessionMetadata, SessionState

from .catching_up import catch_up
from .failures import subscription_end

if TYPE_CHECKING:
    from .actor import SessionActor

log = structlog.get_logger("bamboo_session.actor")


async def state_in_doubt(actor: SessionActor, asked: SessionState) -> None:
    """A move to ``asked`` may have been stored (its requester is closed 1011 to
    resume by): the actor reads what the store holds instead of serving the state it
    held before. Closed: the session's connections here get what a close gives them
    at once, as its notice would, which a write waiting for replicas publishes only
    once its reply is in (lost with it). In ``asked``: taken, as if acknowledged (the
    welcome of the requester's resume shows it, and its attach to an idle session is
    activity, as to any). Anything else: the move was not made, and the state held
    stays (another process's move is the look's, as ever). Where the read fails too,
    nothing is taken: the actor's next look reads the store again (a close then ends
    the connections; an idle held as active is taken at its next quiet look, or
    written over at its next frame-filled one, as before)."""
    try:
        stored = await actor.storage.get_metadata(actor.session_id)
    except StorageError as exc:
        log.warning("reading the state after a change in doubt failed", error=str(exc))
        return
    if stored is None or stored.epoch != actor.room.epoch:
        return  # deleted or replaced: its notice, or the next look, ends the session here
    if stored.state == SessionState.CLOSED:
        await end_closed(actor, stored)
    elif stored.state == asked and not stored.is_expired(actor.storage.now()):
        actor.status.took(asked, stored)


async def closed_elsewhere(actor: SessionActor) -> None:
    """Another process closed the session, and its notice did not come: its peers get
    what the notice gives them (as a close here does, every event acknowledged before
    it first, then ``closed`` and 1000)."""
    stored = await actor.storage.get_metadata(actor.session_id)
    if stored is not None and stored.epoch != actor.room.epoch:
        stored = None
    await end_closed(actor, stored)


async def end_closed(actor: SessionActor, stored: SessionMetadata | None) -> None:
    """The session is closed in the store (``stored``, when of this actor's epoch):
    the events stored before the close reach its connections, then ``closed`` and
    1000, and the actor retires."""
    if stored is not None:
        actor.following.stored_up_to(stored.last_seq)
        await catch_up(actor, stored.last_seq)
    actor.status.state = SessionState.CLOSED
    actor.end(*subscription_end(CLOSED), replays_go_on=True)
