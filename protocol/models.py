"""The session data model: session metadata and state, and (re-exported from
``messages.py`` and ``events.py``) messages and agent events, so that every type of
the model is importable from here.

Field names follow the bamboo-session data model (PROTOCOL.md "Data"), so records
stored by either implementation read alike. Everything here is a msgspec Struct:
plain data, no I/O.
"""

from __future__ import annotations

import enum
import secrets
from datetime import datetime, timedelta
from typing import Any, Final, Self

import msgspec

from .errors import InvalidTransition
from .events import (
    NOT_MESSAGES,
    AgentEvent,
    AgentEventBase,
    AnyAgentEvent,
    Complete,
    Custom,
    ErrorEvent,
    MessageEvent,
    StateChange,
    StoredEvent,
    Thinking,
    Token,
    TokenUsage,
    ToolComplete,
    ToolError,
    ToolResult,
    ToolStart,
)
from .messages import (
    AwareDatetime,
    Int64,
    Message,
    Role,
    ToolCall,
    new_message_id,
    utcnow,
)

__all__ = [
    "NOT_MESSAGES",
    "AgentEvent",
    "AgentEventBase",
    "AnyAgentEvent",
    "AwareDatetime",
    "Complete",
    "Custom",
    "ErrorEvent",
    "Int64",
    "Message",
    "MessageEvent",
    "Role",
    "Session",
    "SessionMetadata",
    "SessionState",
    "StateChange",
    "StoredEvent",
    "Thinking",
    "Token",
    "TokenUsage",
    "ToolCall",
    "ToolComplete",
    "ToolError",
    "ToolResult",
    "ToolStart",
    "new_epoch",
    "new_message_id",
    "utcnow",
]


class SessionState(enum.StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"
    EXPIRED = "expired"

    def can_become(self, target: SessionState) -> bool:
        return target == self or target in _TRANSITIONS[self]

    def check_transition(self, target: SessionState) -> SessionState:
        """``target`` if this state may move there, else :class:`InvalidTransition`."""
        if not self.can_become(target):
            raise InvalidTransition(f"session cannot go from {self.value} to {target.value}")
        return target


_LIVE = frozenset(
    {SessionState.ACTIVE, SessionState.IDLE, SessionState.DISCONNECTED, SessionState.CLOSED}
)
_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.ACTIVE: _LIVE | {SessionState.EXPIRED},
    SessionState.IDLE: _LIVE | {SessionState.EXPIRED},
    SessionState.DISCONNECTED: _LIVE | {SessionState.EXPIRED},
    # Closed and expired are final: history stays readable, nothing moves it on.
    SessionState.CLOSED: frozenset({SessionState.EXPIRED}),
    SessionState.EXPIRED: frozenset(),
}
# Read once: a member read off its class goes through EnumType.__getattr__ on Python
# 3.11, about 850 machine instructions, where a global is a dictionary's lookup (every
# append asks whether its session expired).
_EXPIRED: Final = SessionState.EXPIRED


def new_epoch() -> str:
    return secrets.token_urlsafe(12)


class SessionMetadata(msgspec.Struct):
    """What the index knows of a session. ``last_seq``, ``epoch`` and ``connections``
    go beyond the original model; ``ttl`` (seconds, ``None`` for no expiry) is what
    ``expires_at`` is computed from; ``stored_bytes`` is what the store holds of the
    session's log, in its own measure (persistence/base.py), which a store's
    ``max_session_bytes`` bounds."""

    id: str
    user_id: str | None = None
    title: str | None = None
    state: SessionState = SessionState.ACTIVE
    created_at: datetime = msgspec.field(default_factory=utcnow)
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    last_activity_at: datetime = msgspec.field(default_factory=utcnow)
    expires_at: datetime | None = None
    message_count: int = 0
    extra: dict[str, Any] = {}
    last_seq: int = 0
    epoch: str = msgspec.field(default_factory=new_epoch)
    connections: int = 0
    ttl: int | None = None
    stored_bytes: int = 0

    def touch(self, now: datetime | None = None) -> None:
        """Record activity: the sliding TTL starts again from ``now``."""
        now = now or utcnow()
        self.updated_at = now
        self.last_activity_at = now
        self.expires_at = None if self.ttl is None else now + timedelta(seconds=self.ttl)

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.state == _EXPIRED:
            return True
        return self.expires_at is not None and self.expires_at <= (now or utcnow())


class Session(msgspec.Struct):
    """A session's metadata and its message history."""

    metadata: SessionMetadata
    messages: list[Message] = []

    @classmethod
    def new(
        cls,
        session_id: str,
        user_id: str | None = None,
        title: str | None = None,
        ttl: int | None = None,
        extra: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Self:
        """A session made ``now`` (by default this machine's clock; a server gives its
        store's, which a new session's expiry is of)."""
        metadata = SessionMetadata(
            id=session_id, user_id=user_id, title=title, ttl=ttl, extra=dict(extra or {})
        )
        metadata.created_at = now or metadata.created_at
        metadata.touch(metadata.created_at)
        return cls(metadata=metadata)

    def with_user_id(self, user_id: str) -> Self:
        self.metadata.user_id = user_id
        return self

    def with_title(self, title: str) -> Self:
        self.metadata.title = title
        return self

    def with_ttl(self, ttl: int | None) -> Self:
        self.metadata.ttl = ttl
        self.metadata.touch(self.metadata.last_activity_at)
        return self

    @property
    def id(self) -> str:
        return self.metadata.id
