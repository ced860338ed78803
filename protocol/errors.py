"""Error codes, close codes and the typed errors of the protocol layer."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The ``code`` of an ``error`` frame (PROTOCOL.md)."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"
    CONFLICT = "conflict"
    CLOSED = "closed"
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    """WebSocket close codes and what a client should do on each (PROTOCOL.md)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    INVALID_DATA = 1007  # a text frame that is not UTF-8
    POLICY_VIOLATION = 1008  # first frame was not a valid hello
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # server at its session limit
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    NOT_FOUND = 4404
    HELLO_TIMEOUT = 4408
    SESSION_CLOSED = 4409
    TOO_SLOW = 4429

    @property
    def should_resume(self) -> bool:
        """Whether a client should reconnect with resume after this close."""
        return self in _RESUMABLE


_RESUMABLE = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.HELLO_TIMEOUT,
        CloseCode.TOO_SLOW,
    }
)


class ProtocolError(Exception):
    """A peer's request that gets an ``error`` frame; ``request_id`` is echoed as ``id``."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


class InvalidTransition(ValueError):
    """A session state change that the state table does not allow."""


class InvalidSessionId(ValueError):
    """A session id outside ``[A-Za-z0-9_.-]{1,128}``, or ``.`` / ``..``."""
