"""The session data model: messages, agent events, session metadata and state.

Field names follow the bamboo-session data model (PROTOCOL.md "Data"), so records
stored by either implementation read alike. Everything here is a msgspec Struct:
plain data, no I/O.
"""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Self

import msgspec

from .errors import InvalidTransition

# Integers in typed fields must fit a signed 64-bit integer: JSON could carry more, but
# MessagePack cannot, and both codecs carry the same objects (msgspec bounds stop at int64).
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A time sent by a peer must say its offset (RFC 3339); it is stored and sent in UTC.
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


def utcnow() -> datetime:
    """Now, as an aware UTC datetime (encoded as RFC 3339 with ``Z``)."""
    return datetime.now(UTC)


def new_message_id() -> str:
    return "m_" + secrets.token_urlsafe(12)


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: Any = None


class Message(msgspec.Struct, omit_defaults=True):
    """One entry of a session's history. ``id`` and ``created_at`` are filled in by
    the constructors, and by the server when a peer leaves them out (:meth:`completed`).
    ``content`` is required, so that it is always on the wire."""

    role: Role
    content: str
    id: str = ""
    created_at: AwareDatetime | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    metadata: dict[str, Any] = {}

    @classmethod
    def _new(cls, role: Role, content: str, **fields: Any) -> Self:
        return cls(role=role, content=content, id=new_message_id(), created_at=utcnow(), **fields)

    @classmethod
    def user(cls, content: str) -> Self:
        return cls._new(Role.USER, content)

    @classmethod
    def assistant(cls, content: str) -> Self:
        return cls._new(Role.ASSISTANT, content)

    @classmethod
    def system(cls, content: str) -> Self:
        return cls._new(Role.SYSTEM, content)

    @classmethod
    def tool(cls, tool_call_id: str, content: str) -> Self:
        return cls._new(Role.TOOL, content, tool_call_id=tool_call_id)

    @classmethod
    def assistant_with_tools(cls, content: str, tool_calls: list[ToolCall]) -> Self:
        return cls._new(Role.ASSISTANT, content, tool_calls=list(tool_calls))

    def completed(self) -> Message:
        """This message with ``id`` and ``created_at`` filled in where absent, and
        ``created_at`` in UTC (a naive time is taken as UTC)."""
        created_at = self.created_at
        if created_at is None:
            created_at = utcnow()
        elif (offset := created_at.utcoffset()) is None:
            created_at = created_at.replace(tzinfo=UTC)
        elif offset:
            created_at = created_at.astimezone(UTC)
        if self.id and created_at is self.created_at:
            return self
        return msgspec.structs.replace(self, id=self.id or new_message_id(), created_at=created_at)


class ToolResult(msgspec.Struct):
    success: bool
    content: str = ""
    error: str | None = None


class TokenUsage(msgspec.Struct):
    prompt_tokens: Int64 = 0
    completion_tokens: Int64 = 0
    total_tokens: Int64 = 0


class AgentEventBase(msgspec.Struct, tag_field="type", omit_defaults=True):
    """Base of every agent event; the concrete variants below are tagged by ``type``.

    Fields PROTOCOL.md calls optional (``complete.usage``, ``error.code``) are left out
    when absent; every other field is always on the wire, ``null`` included.
    """


class AgentEvent:
    """Constructors of agent events, as in the seed: ``AgentEvent.token("Hi!")``.

    A value of any variant has the type :data:`AnyAgentEvent`.
    """

    @staticmethod
    def token(content: str) -> Token:
        return Token(content)

    @staticmethod
    def thinking(content: str) -> Thinking:
        return Thinking(content)

    @staticmethod
    def message(message: Message) -> MessageEvent:
        return MessageEvent(message)

    @staticmethod
    def tool_start(tool_call_id: str, tool_name: str, arguments: Any = None) -> ToolStart:
        return ToolStart(tool_call_id, tool_name, arguments)

    @staticmethod
    def tool_complete(tool_call_id: str, result: ToolResult) -> ToolComplete:
        return ToolComplete(tool_call_id, result)

    @staticmethod
    def tool_error(tool_call_id: str, error: str) -> ToolError:
        return ToolError(tool_call_id, error)

    @staticmethod
    def complete(usage: TokenUsage | None = None) -> Complete:
        return Complete(usage)

    @staticmethod
    def error(message: str, code: str | None = None) -> ErrorEvent:
        return ErrorEvent(message, code)

    @staticmethod
    def state_change(from_state: str, to_state: str) -> StateChange:
        return StateChange(from_state, to_state)

    @staticmethod
    def custom(name: str, data: Any = None) -> Custom:
        return Custom(name, data)


class Token(AgentEventBase, tag="token"):
    content: str


class Thinking(AgentEventBase, tag="thinking"):
    content: str


class MessageEvent(AgentEventBase, tag="message"):
    message: Message


class ToolStart(AgentEventBase, tag="tool_start", omit_defaults=False):
    tool_call_id: str
    tool_name: str
    arguments: Any = None


class ToolComplete(AgentEventBase, tag="tool_complete"):
    tool_call_id: str
    result: ToolResult


class ToolError(AgentEventBase, tag="tool_error"):
    tool_call_id: str
    error: str


class Complete(AgentEventBase, tag="complete"):
    usage: TokenUsage | None = None


class ErrorEvent(AgentEventBase, tag="error"):
    message: str
    code: str | None = None


class StateChange(AgentEventBase, tag="state_change"):
    from_state: str = msgspec.field(name="from")
    to_state: str = msgspec.field(name="to")


class Custom(AgentEventBase, tag="custom", omit_defaults=False):
    name: str
    data: Any = None


AnyAgentEvent = (
    Token
    | Thinking
    | MessageEvent
    | ToolStart
    | ToolComplete
    | ToolError
    | Complete
    | ErrorEvent
    | StateChange
    | Custom
)


_event_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyAgentEvent] = msgspec.json.Decoder(AnyAgentEvent)


class StoredEvent:
    """One event of a session's log: ``seq`` counts from 1 with no gaps, ``ts`` is when it
    was stored, ``key`` the publisher's idempotency key (stored, never sent to peers).

    The AgentEvent is held in the form it came in, decoded (``event``) or as its JSON
    (``event_json``), and the other form is made the first time it is asked for, then
    kept. So an event is encoded once for its log line and for every wire frame, and a
    replay from the log sends the stored bytes without decoding them.
    """

    __slots__ = ("_event", "_json", "key", "seq", "ts")

    def __init__(
        self,
        seq: int,
        ts: datetime,
        event: AnyAgentEvent | None = None,
        key: str | None = None,
        *,
        event_json: msgspec.Raw | None = None,
    ) -> None:
        if event is None and event_json is None:
            raise TypeError("StoredEvent needs event or event_json")
        self.seq = seq
        self.ts = ts
        self.key = key
        self._event = event
        self._json = event_json

    @property
    def event(self) -> AnyAgentEvent:
        event = self._event
        if event is None:
            assert self._json is not None
            event = self._event = _event_decoder.decode(self._json)
        return event

    @property
    def event_json(self) -> msgspec.Raw:
        """The AgentEvent as JSON, ready to embed in a log line or a JSON frame."""
        data = self._json
        if data is None:
            data = self._json = msgspec.Raw(_event_encoder.encode(self._event))
        return data

    @property
    def size(self) -> int:
        """Bytes of the encoded event: what memory and page budgets count."""
        return len(self.event_json)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredEvent):
            return NotImplemented
        return (self.seq, self.ts, self.key, self.event) == (
            other.seq,
            other.ts,
            other.key,
            other.event,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        key = "" if self.key is None else f", key={self.key!r}"
        return f"StoredEvent(seq={self.seq}, ts={self.ts!r}, event={self.event!r}{key})"


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


def new_epoch() -> str:
    return secrets.token_urlsafe(12)


class SessionMetadata(msgspec.Struct):
    """What the index knows of a session. ``last_seq``, ``epoch`` and ``connections``
    go beyond the original model; ``ttl`` (seconds, ``None`` for no expiry) is what
    ``expires_at`` is computed from."""

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

    def touch(self, now: datetime | None = None) -> None:
        """Record activity: the sliding TTL starts again from ``now``."""
        now = now or utcnow()
        self.updated_at = now
        self.last_activity_at = now
        self.expires_at = None if self.ttl is None else now + timedelta(seconds=self.ttl)

    def is_expired(self, now: datetime | None = None) -> bool:
        if self.state == SessionState.EXPIRED:
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
    ) -> Self:
        metadata = SessionMetadata(
            id=session_id, user_id=user_id, title=title, ttl=ttl, extra=dict(extra or {})
        )
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
