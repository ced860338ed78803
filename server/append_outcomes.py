"""What a session actor does when its appends do not simply succeed: a byte cap that
refused a batch (each request goes again alone), a store append that failed (the log,
metrics and /readyz), events the session's feed handed out again, and a request
refused. Off the hot path:
server/actor.py calls these only on those outcomes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from bamboo_session.persistence.base import (
    SessionClosed,
    SessionExpired,
    SessionFull,
    SessionLogFailed,
    SessionNotFound,
    SessionRefused,
    StorageError,
    UserFull,
)
from bamboo_session.protocol.models import StoredEvent

from .commands import Append, Request, by_request

if TYPE_CHECKING:
    from .actor import SessionActor

log = structlog.get_logger("bamboo_session.actor")


def refuse(actor: SessionActor, command: Request, exc: BaseException) -> None:
    """Answers a request with the error it failed with, and counts the error."""
    code = command.refuse(exc)
    if code is not None:
        actor.metrics.errors.labels(code=code).inc()


async def over_cap(actor: SessionActor, appends: list[Append], exc: SessionFull) -> None:
    """The session's byte cap (or its user's) refused appends stored together: with those of several
    requests, each request goes again on its own (a batch frame's items together, all
    or nothing, as ever), so that the ones that fit are stored and only the others get
    ``too_large``. Near the cap only: a round trip per request."""
    requests = by_request(appends)
    if len(requests) > 1:
        for request in requests:
            await actor.append(request)
        return
    if isinstance(exc, UserFull):
        actor.metrics.appends_over_user_cap.inc()
    else:
        actor.metrics.appends_over_session_cap.inc()
    for command in appends:
        refuse(actor, command, exc)


def append_failed(actor: SessionActor, exc: StorageError | ValueError, events: int) -> None:
    """Tells the log, metrics and /readyz of a store append that failed."""
    if isinstance(exc, SessionClosed | SessionExpired | SessionNotFound):
        return  # the session's end, not a failure
    if isinstance(exc, SessionRefused):  # its history lost: not an outage of the store
        actor.metrics.events_failed.inc(events)
        return
    if isinstance(exc, StorageError):  # /readyz: 503; logged once an outage, then counted
        own = isinstance(exc, SessionLogFailed)  # unless the session fails alone
        actor.health.failed(actor.session_id, str(exc), events, own)
        actor.metrics.events_failed.inc(events)
    else:  # a bad event or key past the checks before the inbox: each is a bug
        log.error("append failed", error=str(exc), count=events)


def feed_repeated(actor: SessionActor, events: list[StoredEvent], repeated: int) -> None:
    """The session's feed handed out events the room had fanned out already, which it
    sent nobody again (SessionRoom.deliver): a fault of the feed's, counted each time
    and logged the first time of the room's life only. A feed that keeps repeating
    itself would otherwise log a line per batch, hundreds a second per session."""
    actor.metrics.events_repeated.inc(repeated)
    if actor.room.repeated == repeated:
        log.warning(
            "events handed out again by the session's feed were not sent again; "
            "further ones are counted only",
            repeated=repeated,
            seqs=f"{events[0].seq}..{events[-1].seq}",
            published_seq=actor.room.published_seq,
        )
