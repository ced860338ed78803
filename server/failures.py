"""The one place that maps a failure to what a peer is told: an ``error`` frame's code, a
WebSocket close code, an HTTP status, and the words they carry.

Every layer raises typed exceptions (storage errors, auth refusals, limits, protocol
errors) and asks :func:`failure_of` how to report one. An exception that is not in the
table is a bug: 1011 / ``internal`` / 500, and the peer learns nothing more.
"""

from __future__ import annotations

import dataclasses
import http
from typing import Final

from bamboo_session.persistence.base import (
    AppendsSuspended,
    ListingChangedTooLarge,
    ListingTooLarge,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFull,
    SessionNotFound,
    StorageError,
    StorageFull,
)
from bamboo_session.protocol.errors import (
    CloseCode,
    ErrorCode,
    InvalidSessionId,
    InvalidTransition,
    ProtocolError,
)

from .auth import Forbidden, Unauthorized
from .limits import TooManyConnections, TooManySessionConnections
from .pages import StoreTimeout
from .quotas import CreatingTooFast, TooManySessions, TooManyStoredSessions, WelcomeTooLarge


class ServerBusy(Exception):
    """More sessions are live than the server keeps, and none can be evicted."""


class ServerStopping(StorageError):
    """The server is stopping: no session is loaded or attached any more. A
    StorageError, as an in-process caller already handles one."""


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """``reason`` is a short fixed text, fit for a close frame (at most 123 bytes, never
    built from an id or a path). ``detailed`` failures add the exception's own text in
    ``error`` frames and HTTP bodies, where it helps the peer (disk full, say)."""

    close: CloseCode
    error: ErrorCode
    status: http.HTTPStatus
    reason: str
    detailed: bool = False

    def message(self, exc: BaseException) -> str:
        return f"{self.reason}: {exc}" if self.detailed and str(exc) else self.reason


_S = http.HTTPStatus
_C = CloseCode
_E = ErrorCode
_TABLE: dict[type[BaseException], Failure] = {
    SessionNotFound: Failure(_C.NOT_FOUND, _E.NOT_FOUND, _S.NOT_FOUND, "session not found"),
    SessionExpired: Failure(_C.NOT_FOUND, _E.NOT_FOUND, _S.NOT_FOUND, "session expired"),
    SessionClosed: Failure(_C.SESSION_CLOSED, _E.CLOSED, _S.CONFLICT, "session closed"),
    SessionExists: Failure(_C.POLICY_VIOLATION, _E.CONFLICT, _S.CONFLICT, "session exists"),
    InvalidSessionId: Failure(
        _C.POLICY_VIOLATION, _E.BAD_REQUEST, _S.BAD_REQUEST, "invalid session id"
    ),
    InvalidTransition: Failure(
        _C.POLICY_VIOLATION, _E.CONFLICT, _S.CONFLICT, "state change not allowed", True
    ),
    SessionFull: Failure(
        _C.MESSAGE_TOO_BIG, _E.TOO_LARGE, _S.REQUEST_ENTITY_TOO_LARGE, "session full", True
    ),
    StorageFull: Failure(
        _C.TRY_AGAIN_LATER, _E.INTERNAL, _S.SERVICE_UNAVAILABLE, "the store is full"
    ),
    ServerBusy: Failure(
        _C.TRY_AGAIN_LATER, _E.INTERNAL, _S.SERVICE_UNAVAILABLE, "server at its session limit"
    ),
    ServerStopping: Failure(
        _C.SERVICE_RESTART, _E.INTERNAL, _S.SERVICE_UNAVAILABLE, "server restarting"
    ),
    # An offset or a filter no retry serves while the store holds as many matches: the
    # request is what must change (a 503 tells clients and proxies to ask again).
    ListingTooLarge: Failure(
        _C.POLICY_VIOLATION, _E.BAD_REQUEST, _S.BAD_REQUEST, "listing too large", True
    ),
    ListingChangedTooLarge: Failure(
        _C.INTERNAL_ERROR, _E.INTERNAL, _S.SERVICE_UNAVAILABLE, "listing too large", True
    ),
    StoreTimeout: Failure(
        _C.INTERNAL_ERROR, _E.INTERNAL, _S.SERVICE_UNAVAILABLE, "storage unavailable", True
    ),
    StorageError: Failure(
        _C.INTERNAL_ERROR,
        _E.INTERNAL,
        _S.SERVICE_UNAVAILABLE,
        "storage failed; retry later (a publish with the same key is safe)",
        True,
    ),
    # Retrying helps only once the store is opened again, which for a server is its
    # restart (its 1012 close is the cue): "retry later" alone would promise sooner.
    AppendsSuspended: Failure(
        _C.INTERNAL_ERROR,
        _E.INTERNAL,
        _S.SERVICE_UNAVAILABLE,
        "the store takes no appends to this session until the server restarts; retry then "
        "(with the same key)",
        True,
    ),
    TooManyConnections: Failure(
        _C.TOO_SLOW, _E.RATE_LIMITED, _S.TOO_MANY_REQUESTS, "too many connections for this user"
    ),
    TooManySessionConnections: Failure(
        _C.TOO_SLOW,
        _E.RATE_LIMITED,
        _S.TOO_MANY_REQUESTS,
        "too many connections for this session",
    ),
    TooManySessions: Failure(
        _C.FORBIDDEN, _E.FORBIDDEN, _S.FORBIDDEN, "too many sessions for this user"
    ),
    # Its own words: closing sessions makes no room under this cap, deleting them does.
    TooManyStoredSessions: Failure(
        _C.FORBIDDEN, _E.FORBIDDEN, _S.FORBIDDEN, "too many stored sessions for this user"
    ),
    CreatingTooFast: Failure(
        _C.TOO_SLOW, _E.RATE_LIMITED, _S.TOO_MANY_REQUESTS, "creating sessions too fast"
    ),
    WelcomeTooLarge: Failure(
        _C.MESSAGE_TOO_BIG,
        _E.TOO_LARGE,
        _S.REQUEST_ENTITY_TOO_LARGE,
        "the session's metadata makes a welcome over the frame limit",
    ),
}
_UNEXPECTED = Failure(_C.INTERNAL_ERROR, _E.INTERNAL, _S.INTERNAL_SERVER_ERROR, "internal error")


def failure_of(exc: BaseException) -> Failure:
    """How to report ``exc``: the entry of its nearest class in the table."""
    if isinstance(exc, ProtocolError):
        return Failure(_C.POLICY_VIOLATION, exc.code, _S.BAD_REQUEST, exc.message)
    if isinstance(exc, Unauthorized | Forbidden):
        # Their texts are fixed strings of server/auth.py, safe for a close frame.
        if isinstance(exc, Unauthorized):
            return Failure(_C.UNAUTHORIZED, _E.UNAUTHORIZED, _S.UNAUTHORIZED, str(exc))
        return Failure(_C.FORBIDDEN, _E.FORBIDDEN, _S.FORBIDDEN, str(exc))
    for cls in type(exc).__mro__:
        failure = _TABLE.get(cls)
        if failure is not None:
            return failure
    return _UNEXPECTED


# The close of a publisher whose append the store cannot say it stored or not
# (OutcomeUnknown: server/commands.py), instead of an ``ack`` or an ``error`` (the
# table's StorageError entry), either of which might be untrue: its resume replays
# the event if it was stored, and a retry with the same key tells it its seq.
PUBLISH_IN_DOUBT: Final = (
    _C.INTERNAL_ERROR,
    "storage failed: a publish may be stored; resume, then resend it with the same key",
)
# The same for a ``state`` request: an ``error`` might be untrue (a ``closed`` may stand,
# and end the session), an ``ack`` too. Its resume's welcome shows the session's state
# (4409 if it was closed), and a resend of a move to the state it has is a no-op.
STATE_IN_DOUBT: Final = (
    _C.INTERNAL_ERROR,
    "storage failed: a state change may be stored; resume, then resend it if the welcome "
    "shows another state",
)
# The closes after which a connection's writes still queued are not made (commands.py).
WRITES_IN_DOUBT: Final = (PUBLISH_IN_DOUBT, STATE_IN_DOUBT)

# A hello's own words for a failure of the store's: the shared ones speak of a
# publish, which a hello is not (a viewer's has no key at all). The code is the same.
HELLO_STORAGE_FAILED = "storage failed; retry later"


def hello_failure(exc: BaseException) -> Failure:
    """How to report ``exc`` as the close of a ``hello`` that failed."""
    failure = failure_of(exc)
    if failure is _TABLE[StorageError]:
        return dataclasses.replace(failure, reason=HELLO_STORAGE_FAILED)
    return failure


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is one the table knows (anything else is logged as a bug)."""
    return failure_of(exc) is not _UNEXPECTED


def request_error(exc: BaseException, request_id: str | int | None) -> ProtocolError:
    """``exc``, raised while answering a request, as the ``error`` frame to send."""
    failure = failure_of(exc)
    return ProtocolError(failure.error, failure.message(exc), request_id)


_SUBSCRIPTION_ENDS: dict[str, tuple[CloseCode, str]] = {
    "closed": (_C.NORMAL, "session closed"),
    "deleted": (_C.NOT_FOUND, "session deleted"),
    "history lost": (_C.SERVICE_RESTART, "the store restarted and changed the epoch; resume"),
    "events lost": (_C.INTERNAL_ERROR, "events missing from this stream; resume"),
}


def subscription_end(reason: str) -> tuple[CloseCode, str]:
    """How connections are closed when the store ends their session's subscription:
    closed or deleted (perhaps by another server process), else the store went away."""
    return _SUBSCRIPTION_ENDS.get(reason, (_C.SERVICE_RESTART, "server restarting"))
