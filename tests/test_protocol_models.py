"""The data model (protocol/models.py): field names on the wire, constructors, states."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args

import msgspec
import pytest

from bamboo_session.protocol import (
    AgentEvent,
    AgentEventBase,
    Complete,
    Custom,
    ErrorEvent,
    InvalidTransition,
    Message,
    MessageEvent,
    Role,
    Session,
    SessionMetadata,
    SessionState,
    StateChange,
    StoredEvent,
    Thinking,
    Token,
    TokenUsage,
    ToolCall,
    ToolComplete,
    ToolError,
    ToolResult,
    ToolStart,
    utcnow,
)
from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import NOT_MESSAGES, AnyAgentEvent

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def wire(obj: Any) -> Any:
    """What a JSON peer sees."""
    return msgspec.json.decode(msgspec.json.encode(obj))


# --- AgentEvent variants: names and optionality as PROTOCOL.md "Data" ---------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (AgentEvent.token("Hi!"), {"type": "token", "content": "Hi!"}),
        (AgentEvent.thinking("hm"), {"type": "thinking", "content": "hm"}),
        (
            AgentEvent.tool_start("t1", "search", {"q": "x"}),
            {
                "type": "tool_start",
                "tool_call_id": "t1",
                "tool_name": "search",
                "arguments": {"q": "x"},
            },
        ),
        (
            AgentEvent.tool_start("t1", "now"),
            {"type": "tool_start", "tool_call_id": "t1", "tool_name": "now", "arguments": None},
        ),
        (
            AgentEvent.tool_complete("t1", ToolResult(True, "42")),
            {
                "type": "tool_complete",
                "tool_call_id": "t1",
                "result": {"success": True, "content": "42", "error": None},
            },
        ),
        (
            AgentEvent.tool_complete("t1", ToolResult(False, error="boom")),
            {
                "type": "tool_complete",
                "tool_call_id": "t1",
                "result": {"success": False, "content": "", "error": "boom"},
            },
        ),
        (
            AgentEvent.tool_error("t1", "boom"),
            {"type": "tool_error", "tool_call_id": "t1", "error": "boom"},
        ),
        (AgentEvent.complete(), {"type": "complete"}),
        (
            AgentEvent.complete(TokenUsage(1, 2, 3)),
            {
                "type": "complete",
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
            },
        ),
        (AgentEvent.error("bad"), {"type": "error", "message": "bad"}),
        (AgentEvent.error("bad", "E1"), {"type": "error", "message": "bad", "code": "E1"}),
        (
            AgentEvent.state_change("active", "idle"),
            {"type": "state_change", "from": "active", "to": "idle"},
        ),
        (AgentEvent.custom("n"), {"type": "custom", "name": "n", "data": None}),
        (
            AgentEvent.custom("n", [1, {"a": None}]),
            {"type": "custom", "name": "n", "data": [1, {"a": None}]},
        ),
    ],
)
def test_agent_event_wire_shape(event: AgentEventBase, expected: dict[str, Any]) -> None:
    assert wire(event) == expected


def test_agent_event_constructors_build_the_variants() -> None:
    message = Message.user("x")
    assert AgentEvent.token("a") == Token("a")
    assert AgentEvent.thinking("a") == Thinking("a")
    assert AgentEvent.message(message) == MessageEvent(message)
    assert AgentEvent.tool_start("t", "n", 1) == ToolStart("t", "n", 1)
    assert AgentEvent.tool_complete("t", ToolResult(True)) == ToolComplete("t", ToolResult(True))
    assert AgentEvent.tool_error("t", "e") == ToolError("t", "e")
    assert AgentEvent.complete() == Complete(None)
    assert AgentEvent.error("m", "c") == ErrorEvent("m", "c")
    sc = AgentEvent.state_change("a", "b")
    assert sc == StateChange("a", "b")
    assert (sc.from_state, sc.to_state) == ("a", "b")
    assert AgentEvent.custom("n", {"k": 1}) == Custom("n", {"k": 1})


def test_not_messages_is_every_event_type_but_a_message() -> None:
    # The stores and the server tell a message by exact type first (NOT_MESSAGES), and
    # ask isinstance only for a type not in it: an event type added to the union and
    # not to NOT_MESSAGES would still be counted right, but through the slow way on
    # every event of it; one added to NOT_MESSAGES that is a message would not be.
    assert set(get_args(AnyAgentEvent)) - {MessageEvent} == NOT_MESSAGES
    assert not any(issubclass(kind, MessageEvent) for kind in NOT_MESSAGES)


def test_message_event_wire_shape() -> None:
    message = Message(Role.USER, "hi", id="m1", created_at=T0)
    assert wire(AgentEvent.message(message)) == {
        "type": "message",
        "message": {
            "role": "user",
            "content": "hi",
            "id": "m1",
            "created_at": "2024-05-01T12:00:00.123456Z",
        },
    }


def test_state_change_reads_from_and_to() -> None:
    event = msgspec.json.decode(
        b'{"type": "state_change", "from": "idle", "to": "active"}', type=StateChange
    )
    assert (event.from_state, event.to_state) == ("idle", "active")


# --- Message ---------------------------------------------------------------------------


def test_message_constructors_fill_id_and_created_at() -> None:
    before = utcnow()
    messages = [
        Message.user("u"),
        Message.assistant("a"),
        Message.system("s"),
        Message.tool("call1", "result"),
        Message.assistant_with_tools("", [ToolCall("call1", "search", {"q": 1})]),
    ]
    roles = [Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL, Role.ASSISTANT]
    assert [m.role for m in messages] == roles
    assert len({m.id for m in messages}) == 5
    for m in messages:
        assert m.id.startswith("m_")
        assert m.created_at is not None and m.created_at >= before
        assert m.created_at.utcoffset() == timedelta(0)
    assert messages[3].tool_call_id == "call1"
    assert messages[4].tool_calls == [ToolCall("call1", "search", {"q": 1})]


def test_message_wire_shape_full() -> None:
    message = Message(
        Role.ASSISTANT,
        "",
        id="m1",
        created_at=T0,
        tool_calls=[ToolCall("c1", "f")],
        tool_call_id="c0",
        metadata={"k": [1]},
    )
    assert wire(message) == {
        "role": "assistant",
        "content": "",  # always present, even when empty
        "id": "m1",
        "created_at": "2024-05-01T12:00:00.123456Z",
        "tool_calls": [{"id": "c1", "name": "f", "arguments": None}],
        "tool_call_id": "c0",
        "metadata": {"k": [1]},
    }


def test_message_optional_fields_are_left_out_when_absent() -> None:
    assert wire(Message(Role.USER, "", id="m1", created_at=T0)) == {
        "role": "user",
        "content": "",
        "id": "m1",
        "created_at": "2024-05-01T12:00:00.123456Z",
    }


def test_message_content_and_role_are_required() -> None:
    with pytest.raises(msgspec.ValidationError, match="content"):
        msgspec.json.decode(b'{"role": "user"}', type=Message)
    with pytest.raises(msgspec.ValidationError, match="role"):
        msgspec.json.decode(b'{"content": "x"}', type=Message)
    with pytest.raises(msgspec.ValidationError, match="role"):
        msgspec.json.decode(b'{"role": "robot", "content": "x"}', type=Message)


def test_message_created_at_must_carry_an_offset() -> None:
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.json.decode(
            b'{"role": "user", "content": "x", "created_at": "2024-01-01T00:00:00"}', type=Message
        )


def test_completed_fills_missing_id_and_time() -> None:
    bare = Message(Role.USER, "x")
    done = bare.completed()
    assert done is not bare
    assert done.id.startswith("m_") and done.created_at is not None
    assert (bare.id, bare.created_at) == ("", None)  # the original is untouched
    assert done.completed() is done


def test_completed_keeps_what_is_there() -> None:
    message = Message(Role.USER, "x", id="mine", created_at=T0)
    assert message.completed() is message
    timed = Message(Role.USER, "x", created_at=T0).completed()
    assert timed.created_at is T0 and timed.id.startswith("m_")
    named = Message(Role.USER, "x", id="mine").completed()
    assert named.id == "mine" and named.created_at is not None


def test_completed_moves_times_to_utc() -> None:
    plus2 = datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    done = Message(Role.USER, "x", id="m", created_at=plus2).completed()
    assert done.created_at == plus2
    assert wire(done)["created_at"] == "2024-01-01T00:00:00Z"
    naive = Message(Role.USER, "x", id="m", created_at=datetime(2024, 1, 1)).completed()
    assert naive.created_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert wire(naive)["created_at"] == "2024-01-01T00:00:00Z"


def test_tool_call_and_result_defaults() -> None:
    assert wire(ToolCall("c", "n")) == {"id": "c", "name": "n", "arguments": None}
    assert msgspec.json.decode(b'{"success": true}', type=ToolResult) == ToolResult(True, "", None)
    assert wire(TokenUsage()) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_token_usage_refuses_integers_beyond_64_bits() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"prompt_tokens": %d}' % 2**63, type=TokenUsage)
    assert msgspec.json.decode(b'{"prompt_tokens": %d}' % (2**63 - 1), type=TokenUsage)


def test_times_are_rfc3339_utc_with_z() -> None:
    assert wire(T0) == "2024-05-01T12:00:00.123456Z"
    now = utcnow()
    assert now.tzinfo is UTC
    assert wire(now).endswith("Z")


def test_stored_event_line_shape() -> None:
    stored = StoredEvent(3, T0, Token("a"))
    assert msgspec.json.decode(encode_stored_event(stored)) == {
        "seq": 3,
        "ts": "2024-05-01T12:00:00.123456Z",
        "event": {"type": "token", "content": "a"},
    }
    keyed = encode_stored_event(StoredEvent(3, T0, Token("a"), key="k"))
    assert msgspec.json.decode(keyed)["key"] == "k"


def test_stored_event_encodes_and_decodes_its_event_once() -> None:
    stored = StoredEvent(1, T0, Token("a"))
    assert stored.event_json is stored.event_json  # encoded once, then kept
    assert bytes(stored.event_json) == b'{"type":"token","content":"a"}'
    from_json = StoredEvent.from_json(1, T0, msgspec.Raw(b'{"type":"token","content":"a"}'))
    assert from_json.event is from_json.event == Token("a")  # decoded once, then kept
    assert from_json == stored and from_json.size == stored.size == 30
    with pytest.raises(TypeError):
        StoredEvent(1, T0)  # type: ignore[call-arg]


# --- SessionState ----------------------------------------------------------------------

S = SessionState
ALLOWED = {
    (a, b)
    for a in (S.ACTIVE, S.IDLE, S.DISCONNECTED)
    for b in (S.ACTIVE, S.IDLE, S.DISCONNECTED, S.CLOSED, S.EXPIRED)
} | {(S.CLOSED, S.CLOSED), (S.CLOSED, S.EXPIRED), (S.EXPIRED, S.EXPIRED)}


@pytest.mark.parametrize("source", list(SessionState))
@pytest.mark.parametrize("target", list(SessionState))
def test_state_transitions(source: SessionState, target: SessionState) -> None:
    allowed = (source, target) in ALLOWED
    assert source.can_become(target) is allowed
    if allowed:
        assert source.check_transition(target) is target
    else:
        with pytest.raises(InvalidTransition, match=f"from {source.value} to {target.value}"):
            source.check_transition(target)


def test_state_values() -> None:
    assert [s.value for s in SessionState] == [
        "active",
        "idle",
        "disconnected",
        "closed",
        "expired",
    ]


# --- SessionMetadata and Session -------------------------------------------------------


def test_session_metadata_wire_fields() -> None:
    metadata = SessionMetadata(
        id="s1",
        created_at=T0,
        updated_at=T0,
        last_activity_at=T0,
        epoch="e1",
    )
    assert wire(metadata) == {
        "id": "s1",
        "user_id": None,
        "title": None,
        "state": "active",
        "created_at": "2024-05-01T12:00:00.123456Z",
        "updated_at": "2024-05-01T12:00:00.123456Z",
        "last_activity_at": "2024-05-01T12:00:00.123456Z",
        "expires_at": None,
        "message_count": 0,
        "extra": {},
        "last_seq": 0,
        "epoch": "e1",
        "connections": 0,
        "ttl": None,
        "stored_bytes": 0,
    }


def test_new_session_has_fresh_epoch_and_sliding_expiry() -> None:
    session = Session.new("s1", user_id="u", title="t", ttl=60, extra={"a": 1})
    metadata = session.metadata
    assert session.id == "s1"
    assert (metadata.user_id, metadata.title, metadata.ttl, metadata.extra) == (
        "u",
        "t",
        60,
        {"a": 1},
    )
    assert metadata.created_at == metadata.last_activity_at == metadata.updated_at
    assert metadata.expires_at == metadata.last_activity_at + timedelta(seconds=60)
    assert metadata.epoch and metadata.epoch != Session.new("s2").metadata.epoch
    assert session.messages == []
    assert not metadata.is_expired()
    assert metadata.is_expired(metadata.expires_at)
    assert not metadata.is_expired(metadata.expires_at - timedelta(microseconds=1))


def test_touch_slides_expiry_and_no_ttl_never_expires() -> None:
    metadata = SessionMetadata(id="s", ttl=10)
    metadata.touch(T0)
    assert (metadata.updated_at, metadata.last_activity_at) == (T0, T0)
    assert metadata.expires_at == T0 + timedelta(seconds=10)
    metadata.touch()
    assert metadata.last_activity_at > T0
    forever = SessionMetadata(id="s")
    forever.touch()
    assert forever.expires_at is None
    assert not forever.is_expired(datetime.max.replace(tzinfo=UTC))
    forever.state = SessionState.EXPIRED
    assert forever.is_expired()


def test_session_builders() -> None:
    session = Session.new("s").with_user_id("u").with_title("t").with_ttl(5)
    metadata = session.metadata
    assert (metadata.user_id, metadata.title, metadata.ttl) == ("u", "t", 5)
    assert metadata.expires_at == metadata.last_activity_at + timedelta(seconds=5)
    assert session.with_ttl(None).metadata.expires_at is None


def test_session_extra_is_copied() -> None:
    extra = {"a": 1}
    session = Session.new("s", extra=extra)
    session.metadata.extra["b"] = 2
    assert extra == {"a": 1}
