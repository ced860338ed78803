"""Agent events: what an agent runtime publishes into a session, one msgspec Struct per
variant tagged by ``type`` (``token``, ``tool_start``, ...), the ``AgentEvent``
constructors, and :class:`StoredEvent`, an event as a session's log holds it.

Field names follow the bamboo-session data model (PROTOCOL.md "Data"). No I/O;
:mod:`.models` re-exports everything here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import msgspec

from .absent import NullMeansAbsent
from .messages import Int64, Message


class ToolResult(msgspec.Struct):
    """A peer's ``null`` for ``content`` is as if it left it out (absent.py)."""

    success: bool
    content: NullMeansAbsent[str] = ""
    error: str | None = None

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.content is None:
            sent.content = ""


class TokenUsage(msgspec.Struct):
    """A peer's ``null`` for a count is as if it left it out: 0 (absent.py)."""

    prompt_tokens: NullMeansAbsent[Int64] = 0
    completion_tokens: NullMeansAbsent[Int64] = 0
    total_tokens: NullMeansAbsent[Int64] = 0

    def __post_init__(self) -> None:
        sent: Any = self  # as decoded: the checker sees the fields as they are once this ran
        if sent.prompt_tokens is None:
            sent.prompt_tokens = 0
        if sent.completion_tokens is None:
            sent.completion_tokens = 0
        if sent.total_tokens is None:
            sent.total_tokens = 0


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

# Every event type but a message's, for a test by exact type (what a decoder builds):
# ``type(event) in NOT_MESSAGES`` answers at C speed, where ``isinstance(event,
# MessageEvent)`` of another Struct asks the Struct's metaclass for its
# ``__instancecheck__`` (about 800 machine instructions, several times an event on the
# hot path). A caller's subclass is not in it, and takes isinstance's way.
NOT_MESSAGES: Final = frozenset(
    {Token, Thinking, ToolStart, ToolComplete, ToolError, Complete, ErrorEvent, StateChange, Custom}
)


_event_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[AnyAgentEvent] = msgspec.json.Decoder(AnyAgentEvent)


def encode_event(event: AnyAgentEvent) -> bytes:
    """The event's JSON, in an allocation of its size. msgspec's encode() hands back its
    growth buffer, which holds up to half again as much as the JSON in it (it does not
    shrink it, on purpose), and an event's JSON is kept (replay rings, stores in
    memory): a copy of a few hundred bytes costs less than the slack it frees."""
    return bytes(memoryview(_event_encoder.encode(event)))


class StoredEvent(msgspec.Struct):
    """One event of a session's log: ``seq`` counts from 1 with no gaps, ``ts`` is when it
    was stored, ``key`` the publisher's idempotency key (stored, never sent to peers).

    The AgentEvent is held in the form it came in, decoded (``StoredEvent(seq, ts,
    event, key)``) or as its JSON (:meth:`from_json`), and the other form is made the
    first time it is asked for, then kept. So an event is encoded once for its log line
    and for every wire frame, and a replay from the log sends the stored bytes without
    decoding them.

    Tracked by the cycle collector: it may hold the very object an in-process caller
    appended, and what that refers to is the caller's business. The replay rings keep
    an event's frame instead (server/outbound.py ``EventOutbound``), which holds no
    object of the caller's.
    """

    seq: int
    ts: datetime
    _event: AnyAgentEvent | None
    key: str | None = None
    _json: msgspec.Raw | None = None

    @classmethod
    def from_json(
        cls, seq: int, ts: datetime, event_json: msgspec.Raw, key: str | None = None
    ) -> StoredEvent:
        """An event read back as JSON (from a log line, a row, a Redis entry)."""
        return cls(seq, ts, None, key, event_json)

    @property
    def event(self) -> AnyAgentEvent:
        event = self._event
        if event is None:
            assert self._json is not None, "a StoredEvent holds its event in one form"
            event = self._event = _event_decoder.decode(self._json)
        return event

    @property
    def event_json(self) -> msgspec.Raw:
        """The AgentEvent as JSON, ready to embed in a log line or a JSON frame."""
        data = self._json
        if data is None:
            event = self._event
            assert event is not None, "a StoredEvent holds its event in one form"
            data = self._json = msgspec.Raw(encode_event(event))
        return data

    @property
    def size(self) -> int:
        """Bytes of the encoded event: what memory and page budgets count."""
        data = self._json  # as event_json, without its call once encoded: 3 an append
        return len(data if data is not None else self.event_json)

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
