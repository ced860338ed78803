"""Codecs (protocol/codec.py): round trips in both formats, and hostile input.

Properties: any valid frame encodes and decodes to an equal frame in JSON and in
MessagePack; ``decode_client`` raises nothing but ``ProtocolError(bad_request)``, and
whatever it accepts is carried alike by both codecs.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo_session.protocol import (
    Complete,
    Custom,
    ErrorCode,
    ErrorEvent,
    Message,
    MessageEvent,
    ProtocolError,
    Role,
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
)
from bamboo_session.protocol.codec import (
    CODECS_BY_SUBPROTOCOL,
    JSON,
    MSGPACK,
    SUBPROTOCOLS,
    Codec,
    decode_stored_event,
    encode_stored_event,
)
from bamboo_session.protocol.frames import (
    Ack,
    Closed,
    Error,
    EventFrame,
    EventRecord,
    Events,
    EventsRequest,
    Hello,
    History,
    HistoryRequest,
    Ping,
    Pong,
    Presence,
    PublishBatch,
    PublishEvent,
    PublishMessage,
    StateRequest,
    Welcome,
)
from bamboo_session.protocol.free_form import (
    FREE_VALUE_BYTES,
    MAX_FREE_VALUES,
    MAX_NESTING,
    free_form_problem,
)

CODECS = [JSON, MSGPACK]
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT = st.integers(0, 2**63 - 1)
TEXT = st.text(max_size=20)

# --- strategies ------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
utc_times = st.datetimes(timezones=st.just(UTC))
tool_calls = st.builds(ToolCall, TEXT, TEXT, json_values)
messages = st.builds(
    Message,
    role=st.sampled_from(Role),
    content=TEXT,
    id=TEXT,
    created_at=st.none() | utc_times,
    tool_calls=st.none() | st.lists(tool_calls, max_size=3),
    tool_call_id=st.none() | TEXT,
    metadata=st.dictionaries(TEXT, json_values, max_size=3),
)
events = st.one_of(
    st.builds(Token, TEXT),
    st.builds(Thinking, TEXT),
    st.builds(MessageEvent, messages),
    st.builds(ToolStart, TEXT, TEXT, json_values),
    st.builds(ToolComplete, TEXT, st.builds(ToolResult, st.booleans(), TEXT, st.none() | TEXT)),
    st.builds(ToolError, TEXT, TEXT),
    st.builds(Complete, st.none() | st.builds(TokenUsage, UINT, UINT, UINT)),
    st.builds(ErrorEvent, TEXT, st.none() | TEXT),
    st.builds(StateChange, TEXT, TEXT),
    st.builds(Custom, TEXT, json_values),
)
request_ids = st.none() | INT64 | TEXT
keys = st.none() | st.text(min_size=1, max_size=128)
client_frames = st.one_of(
    st.builds(
        Hello,
        token=st.none() | TEXT,
        user_id=st.none() | TEXT,
        title=st.none() | TEXT,
        create=st.booleans(),
        last_seq=st.none() | UINT,
        epoch=st.none() | TEXT,
        role=st.sampled_from(["client", "agent"]),
    ),
    st.builds(PublishEvent, events, request_ids, keys),
    st.builds(PublishMessage, messages, request_ids, keys),
    st.builds(HistoryRequest, request_ids, st.integers(1, 2**63 - 1), st.none() | UINT),
    st.builds(EventsRequest, request_ids, UINT, st.integers(1, 2**63 - 1)),
    st.builds(StateRequest, st.sampled_from(["active", "idle", "closed"]), request_ids),
    st.builds(Ping, request_ids),
)
metadata = st.builds(
    SessionMetadata,
    id=TEXT,
    user_id=st.none() | TEXT,
    title=st.none() | TEXT,
    state=st.sampled_from(SessionState),
    created_at=utc_times,
    updated_at=utc_times,
    last_activity_at=utc_times,
    expires_at=st.none() | utc_times,
    message_count=UINT,
    extra=st.dictionaries(TEXT, json_values, max_size=3),
    last_seq=UINT,
    epoch=TEXT,
    connections=UINT,
    ttl=st.none() | UINT,
)
server_frames = st.one_of(
    st.builds(Welcome, TEXT, metadata, TEXT, UINT, st.booleans(), UINT),
    st.builds(EventFrame, UINT, utc_times, events),
    st.builds(Ack, UINT, request_ids, st.booleans()),
    st.builds(History, st.lists(messages, max_size=3), st.booleans(), request_ids),
    st.builds(
        Events,
        st.lists(st.builds(EventRecord, UINT, utc_times, events), max_size=3),
        UINT,
        request_ids,
    ),
    st.builds(Presence, TEXT, UINT, st.none() | TEXT, st.none() | TEXT),
    st.builds(Pong, request_ids),
    st.builds(Closed, TEXT),
    st.builds(Error, st.sampled_from(ErrorCode), TEXT, request_ids),
)

# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@given(frame=client_frames)
def test_client_frames_round_trip(codec: Codec, frame: Any) -> None:
    assert codec.decode_client(codec.encode(frame)) == frame


@pytest.mark.parametrize("codec", CODECS, ids=repr)
@given(frame=server_frames)
def test_server_frames_round_trip(codec: Codec, frame: Any) -> None:
    assert codec.decode_server(codec.encode(frame)) == frame


@given(frame=client_frames)
def test_both_codecs_carry_the_same_objects(frame: Any) -> None:
    from_json = JSON.decode_client(JSON.encode(frame))
    from_msgpack = MSGPACK.decode_client(MSGPACK.encode(frame))
    assert from_json == from_msgpack
    assert JSON.encode(from_json) == JSON.encode(from_msgpack)


@given(
    st.builds(StoredEvent, UINT, utc_times, events, st.none() | st.text(min_size=1, max_size=128))
)
def test_stored_event_lines_round_trip(stored: StoredEvent) -> None:
    line = encode_stored_event(stored)
    assert b"\n" not in line
    assert decode_stored_event(line) == stored


def test_decode_accepts_str_and_bytes() -> None:
    assert JSON.decode_client('{"type":"ping","id":1}') == Ping(1)
    assert JSON.decode_server('{"type":"pong","id":1}') == Pong(1)
    assert JSON.decode_server(b'{"type":"pong"}') == Pong()


def test_codec_registry() -> None:
    assert SUBPROTOCOLS == ("bamboo.v1", "bamboo.v1.msgpack")
    assert CODECS_BY_SUBPROTOCOL == {"bamboo.v1": JSON, "bamboo.v1.msgpack": MSGPACK}
    assert (JSON.text, MSGPACK.text) == (True, False)
    assert repr(JSON) == "<Codec json>" and repr(MSGPACK) == "<Codec msgpack>"


# --- hostile input: always ProtocolError(bad_request) -------------------------------------


def bad(codec: Codec, data: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client(data)
    assert info.value.code is ErrorCode.BAD_REQUEST
    return info.value


def jbad(obj: Any) -> ProtocolError:
    return bad(JSON, json.dumps(obj) if not isinstance(obj, bytes) else obj)


def test_unknown_fields_are_ignored() -> None:
    frame = {"type": "ping", "id": 1, "extra": {"deep": [1, 2]}, "x": None}
    assert JSON.decode_client(json.dumps(frame)) == Ping(1)
    assert MSGPACK.decode_client(msgspec.msgpack.encode(frame)) == Ping(1)
    event = {"type": "event", "event": {"type": "token", "content": "a", "more": 1}}
    assert JSON.decode_client(json.dumps(event)) == PublishEvent(Token("a"))


@pytest.mark.parametrize(
    ("frame", "request_id"),
    [
        ({"type": "nope", "id": "a"}, "a"),
        ({"id": 5}, 5),  # no type at all
        ({"type": 3, "id": 5}, 5),
        ({"type": "history", "id": 7, "limit": "ten"}, 7),
        ({"type": "history", "id": 7, "limit": 1.0}, 7),
        ({"type": "event", "id": "e", "event": {"type": "nope"}}, "e"),
        ({"type": "event", "id": "e", "event": {"type": "token"}}, "e"),
        ({"type": "message", "id": 0, "message": {"role": "user"}}, 0),
        ({"type": "state", "id": 1, "state": "paused"}, 1),
        ({"type": "ping", "id": 2**63}, None),  # the id itself is refused: nothing to echo
        ({"type": "ping", "id": [1]}, None),
        ({"type": "ping", "id": None, "x": 1, "limit": 2}, None),
        ([1, 2], None),
        ("ping", None),
        (None, None),
    ],
)
def test_invalid_frames_salvage_the_request_id(frame: Any, request_id: Any) -> None:
    for codec, data in ((JSON, json.dumps(frame)), (MSGPACK, msgspec.msgpack.encode(frame))):
        if frame == {"type": "ping", "id": None, "x": 1, "limit": 2}:
            continue  # a valid ping
        assert bad(codec, data).request_id == request_id


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"{}{}",
        b'{"type":"ping",}',
        b"\xff\xfe",
        b'{"type":"ping","id":"\xff"}',  # invalid UTF-8 inside a string
        b'{"type":"nope","id":"\xff"}',  # ... where the id is salvaged too
        b'{"type":"event","event":{"type":"token","content":"\\ud800"}}',  # lone surrogate
        b'{"type":"event","event":{"type":"custom","name":"x","data":1e400}}',
        b'{"type":"event","event":{"type":"custom","name":"x","data":NaN}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type":"event","event":{"type":"custom","name":"x","data":'
        + b"[" * 5000
        + b"]" * 5000
        + b"}}",
        b'{"type":"nope","id":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_malformed_json(data: bytes) -> None:
    bad(JSON, data)


def test_str_input_that_is_not_utf8_encodable() -> None:
    bad(JSON, '{"type":"ping","id":"\ud800"}')
    bad(MSGPACK, "\ud800")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x91" * 100_000,
        b"\x81\xa4type" + b"\x91" * 100_000,
        b"\x82\xa4type\xa4ping\xa2id\xa1\xff",  # invalid UTF-8
        b"\x82\xa4type\xa4nope\xa2id\xa1\xff",
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\x81\x01\x02",  # an int key
    ],
)
def test_malformed_msgpack(data: bytes) -> None:
    bad(MSGPACK, data)


def test_deep_nesting_in_msgpack_custom_data() -> None:
    data = b"\x82\xa4type\xa5event\xa5event\x83\xa4type\xa6custom\xa4name\xa1x\xa4data"
    bad(MSGPACK, data + b"\x91" * 100_000 + b"\xc0")


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_json_integers_beyond_64_bits_are_refused(value: int) -> None:
    for frame in (
        {"type": "ping", "id": value},
        {"type": "hello", "last_seq": value},
        {"type": "history", "id": 1, "limit": value},
        {"type": "history", "id": 1, "before": value},
        {"type": "events", "id": 1, "after_seq": value},
        {"type": "event", "id": 1, "event": {"type": "custom", "name": "x", "data": [value]}},
        {
            "type": "event",
            "id": 1,
            "event": {
                "type": "tool_start",
                "tool_call_id": "t",
                "tool_name": "n",
                "arguments": {"a": value},
            },
        },
        {"type": "event", "id": 1, "event": {"type": "complete", "usage": {"total_tokens": value}}},
        {
            "type": "message",
            "id": 1,
            "message": {"role": "user", "content": "", "metadata": {"n": value}},
        },
        {
            "type": "message",
            "id": 1,
            "message": {
                "role": "user",
                "content": "",
                "tool_calls": [{"id": "c", "name": "f", "arguments": value}],
            },
        },
        {
            "type": "event",
            "id": 1,
            "event": {
                "type": "message",
                "message": {"role": "user", "content": "", "metadata": {"n": value}},
            },
        },
    ):
        jbad(frame)


def test_free_form_integers_use_the_whole_msgpack_range() -> None:
    for value in (2**64 - 1, -(2**63)):
        frame = {"type": "event", "id": 1, "event": {"type": "custom", "name": "x", "data": value}}
        decoded = JSON.decode_client(json.dumps(frame))
        assert MSGPACK.decode_client(MSGPACK.encode(decoded)) == decoded


def test_free_form_problem_errors_carry_the_request_id() -> None:
    frame = {"type": "event", "id": "r", "event": {"type": "custom", "name": "x", "data": 2**64}}
    error = jbad(frame)
    assert error.request_id == "r"
    assert "64-bit" in error.message


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x01",
        msgspec.msgpack.Ext(5, b"x"),
        datetime(2024, 1, 1, tzinfo=UTC),  # a MessagePack timestamp
        {1: "int key"},
        {"nested": {(1, 2): "array key"}},
        float("nan"),
        float("inf"),
        [float("-inf")],
    ],
    # Not repr: an Ext's carries its address, which differs between the processes of a
    # parallel run (pytest-xdist), and each must collect the same tests.
    ids=lambda value: (
        f"Ext({value.code}, {value.data!r})"
        if isinstance(value, msgspec.msgpack.Ext)
        else repr(value)
    ),
)
def test_msgpack_values_json_cannot_carry_are_refused(data: Any) -> None:
    frames = [
        {"type": "event", "id": 9, "event": {"type": "custom", "name": "x", "data": data}},
        {
            "type": "event",
            "id": 9,
            "event": {
                "type": "tool_start",
                "tool_call_id": "t",
                "tool_name": "n",
                "arguments": [data],
            },
        },
        {
            "type": "message",
            "id": 9,
            "message": {"role": "user", "content": "", "metadata": {"k": data}},
        },
    ]
    for frame in frames:
        assert bad(MSGPACK, msgspec.msgpack.encode(frame)).request_id == 9


def test_nesting_limit_on_free_form_values() -> None:
    def nested(levels: int) -> Any:
        value: Any = 0
        for _ in range(levels):
            value = [value]
        return value

    assert free_form_problem(nested(MAX_NESTING)) is None
    assert (
        free_form_problem(nested(MAX_NESTING + 1))
        == f"value nested deeper than {MAX_NESTING} levels"
    )
    ok = {
        "type": "event",
        "id": 1,
        "event": {"type": "custom", "name": "x", "data": nested(MAX_NESTING)},
    }
    too_deep = {
        "type": "event",
        "id": 1,
        "event": {"type": "custom", "name": "x", "data": nested(MAX_NESTING + 1)},
    }
    for codec in CODECS:
        assert codec.decode_client(
            msgspec.msgpack.encode(ok) if codec is MSGPACK else json.dumps(ok)
        )
        data = msgspec.msgpack.encode(too_deep) if codec is MSGPACK else json.dumps(too_deep)
        assert "nested deeper" in bad(codec, data).message


def rows(values: int) -> list[Any]:
    """A free-form value holding ``values`` values: a list of ``values - 1`` empty objects."""
    return [{}] * (values - 1)


def custom(data: Any, request_id: int = 1) -> dict[str, Any]:
    return {
        "type": "event",
        "id": request_id,
        "event": {"type": "custom", "name": "x", "data": data},
    }


def test_a_frame_holds_at_most_max_free_values_and_weighs_them() -> None:
    for codec in CODECS:
        encode = msgspec.msgpack.encode if codec is MSGPACK else json.dumps
        data = encode(custom(rows(MAX_FREE_VALUES)))
        frame, weight = codec.decode_request(data)
        assert isinstance(frame, PublishEvent)
        assert weight == len(data) + MAX_FREE_VALUES * FREE_VALUE_BYTES
        error = bad(codec, encode(custom(rows(MAX_FREE_VALUES + 1), request_id=7)))
        assert error.message == f"more than {MAX_FREE_VALUES} free-form values in one frame"
        assert error.request_id == 7
        # A plain token holds none: it weighs its bytes.
        token = encode({"type": "event", "id": 2, "event": {"type": "token", "content": "x"}})
        assert codec.decode_request(token)[1] == len(token)


def test_members_and_elements_count_at_every_depth() -> None:
    half = MAX_FREE_VALUES // 2
    # {"a": [{}...]}: the object, the list and its elements.
    assert jbad(custom({"a": rows(MAX_FREE_VALUES)})).message.startswith("more than")
    assert isinstance(JSON.decode_client(json.dumps(custom({"a": rows(half)}))), PublishEvent)
    # A message's metadata and its tool calls' arguments count together.
    calls = [{"id": "c", "name": "f", "arguments": {"r": rows(half)}}]
    message = {
        "role": "assistant",
        "content": "",
        "metadata": {"r": rows(half)},
        "tool_calls": calls,
    }
    error = jbad({"type": "message", "id": 3, "message": message})
    assert error.message.startswith("more than") and error.request_id == 3


def test_a_batch_holds_at_most_max_free_values_over_all_its_items() -> None:
    third = MAX_FREE_VALUES // 3
    item = {"event": {"type": "custom", "name": "x", "data": rows(third)}}
    frame, weight = JSON.decode_request(json.dumps({"type": "batch", "id": 1, "items": [item] * 3}))
    assert isinstance(frame, PublishBatch) and weight > 3 * third * FREE_VALUE_BYTES
    error = jbad({"type": "batch", "id": 9, "items": [item] * 4})
    assert error.message == f"items[3]: more than {MAX_FREE_VALUES} free-form values in one frame"
    assert error.request_id == 9


def test_free_form_problem_accepts_plain_json() -> None:
    assert free_form_problem({"a": [1, 2.5, "x", None, True, {"b": []}], "c": {}}) is None
    assert free_form_problem(None) is None
    assert free_form_problem((1, 2)) == "tuple value, not JSON"


def test_an_empty_key_is_a_key() -> None:
    # PROTOCOL.md: a key is a string; "" is one like any other, only null or absent is none.
    frame = {"type": "event", "id": 1, "key": "", "event": {"type": "token", "content": "a"}}
    assert JSON.decode_client(json.dumps(frame)).key == ""
    message = {"type": "message", "key": "", "message": {"role": "user", "content": "a"}}
    assert MSGPACK.decode_client(msgspec.msgpack.encode(message)).key == ""
    for absent in ({"key": None}, {}):
        frame = {"type": "event", **absent, "event": {"type": "token", "content": "a"}}
        assert JSON.decode_client(json.dumps(frame)).key is None


def test_key_length_counts_characters() -> None:
    for key in ("é" * 128, "\U0001f600" * 128, "k"):
        frame = {"type": "event", "key": key, "event": {"type": "token", "content": "a"}}
        assert JSON.decode_client(json.dumps(frame)).key == key
    frame = {"type": "event", "key": "é" * 129, "event": {"type": "token", "content": "a"}}
    jbad(frame)


def test_message_times_are_moved_to_utc() -> None:
    for event_wrapped in (False, True):
        message = {"role": "user", "content": "x", "created_at": "2024-01-01T02:00:00+02:00"}
        frame: dict[str, Any] = (
            {"type": "event", "event": {"type": "message", "message": message}}
            if event_wrapped
            else {"type": "message", "message": message}
        )
        decoded = JSON.decode_client(json.dumps(frame))
        out = decoded.event.message if event_wrapped else decoded.message
        assert out.created_at.utcoffset() == timedelta(0)
        assert b'"2024-01-01T00:00:00Z"' in JSON.encode(decoded)


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_message_time_outside_utc_range_is_refused(created_at: str) -> None:
    frame = {
        "type": "message",
        "id": 4,
        "message": {"role": "user", "content": "x", "created_at": created_at},
    }
    assert jbad(frame).request_id == 4


def test_naive_message_time_is_refused() -> None:
    frame = {
        "type": "message",
        "message": {"role": "user", "content": "x", "created_at": "2024-01-01T00:00:00"},
    }
    jbad(frame)


def test_message_time_in_utc_is_kept_as_is() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    frame = PublishMessage(Message(Role.USER, "x", created_at=when))
    assert JSON.decode_client(JSON.encode(frame)).message.created_at == when


# --- fuzzing -----------------------------------------------------------------------------

FRAME_TYPES = ["hello", "event", "message", "history", "events", "state", "ping", "welcome", "nope"]
EVENT_TYPES = [
    "token",
    "thinking",
    "message",
    "tool_start",
    "tool_complete",
    "tool_error",
    "complete",
    "error",
    "state_change",
    "custom",
]
wild_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(FRAME_TYPES + EVENT_TYPES + ["user", "active", "id", "key"])
)
wild_values = st.recursive(
    wild_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "id",
                    "event",
                    "message",
                    "role",
                    "content",
                    "data",
                    "key",
                    "limit",
                    "last_seq",
                    "created_at",
                    "metadata",
                    "tool_calls",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)
often_text = st.text(max_size=5) | wild_values
wild_messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "tool", "x"]), "content": st.text(max_size=5) | wild_scalars},
    optional={
        "metadata": st.dictionaries(st.text(max_size=3), wild_values, max_size=3) | wild_values,
        "tool_calls": st.lists(
            st.fixed_dictionaries({"id": often_text, "name": often_text, "arguments": wild_values}),
            max_size=2,
        )
        | wild_values,
        "created_at": st.sampled_from(
            ["2024-01-01T00:00:00Z", "2024-01-01T00:00:00+05:00", "x", "0001-01-01T00:00:00+00:30"]
        ),
    },
)
wild_events = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES)},
    optional={
        **{
            name: often_text
            for name in ("content", "name", "tool_call_id", "tool_name", "error", "from", "to")
        },
        "data": wild_values,
        "arguments": wild_values,
        "message": wild_messages | wild_values,
        "result": st.fixed_dictionaries({"success": st.booleans()}) | wild_values,
        "usage": st.fixed_dictionaries({"total_tokens": st.integers(-(2**70), 2**70)})
        | wild_values,
    },
)
wild_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES)},
    optional={
        "id": wild_scalars,
        "event": wild_events,
        "message": wild_messages,
        "key": st.text(max_size=130) | wild_scalars,
        "limit": wild_scalars,
        "last_seq": wild_scalars,
        "state": wild_scalars,
        "extra": wild_values,
    },
)


def accepted_frames_are_portable(frame: Any) -> None:
    """What a codec accepts, both codecs carry alike."""
    via_json = JSON.decode_client(JSON.encode(frame))
    via_msgpack = MSGPACK.decode_client(MSGPACK.encode(frame))
    assert via_json == via_msgpack == frame


def decode_or_refuse(codec: Codec, data: bytes | str) -> None:
    try:
        frame = codec.decode_client(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        assert exc.request_id is None or isinstance(exc.request_id, int | str)
    else:
        accepted_frames_are_portable(frame)


FUZZ = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data: bytes) -> None:
    decode_or_refuse(JSON, data)
    decode_or_refuse(MSGPACK, data)


@FUZZ
@given(st.text(max_size=100))
def test_arbitrary_text(data: str) -> None:
    decode_or_refuse(JSON, data)
    decode_or_refuse(MSGPACK, data)


@FUZZ
@given(wild_frames)
def test_arbitrary_json_frames(frame: dict[str, Any]) -> None:
    decode_or_refuse(JSON, json.dumps(frame))  # json.dumps writes NaN and huge ints too


mp_scalars = (
    wild_scalars
    | st.binary(max_size=5)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=3))
)


@FUZZ
@given(wild_frames, mp_scalars, st.booleans())
def test_arbitrary_msgpack_frames(frame: dict[str, Any], extra: Any, wrap: bool) -> None:
    def clip(value: Any) -> Any:  # MessagePack holds 64-bit integers only
        if isinstance(value, bool) or not isinstance(value, int):
            return value
        return max(-(2**63), min(value, 2**64 - 1))

    frame = json.loads(json.dumps(frame), parse_int=lambda s: clip(int(s)))
    extra = clip(extra)  # the wild scalars hold huge integers too
    if frame.get("event", {}).get("type") == "custom":
        frame["event"]["data"] = [extra, {1: extra}] if wrap else extra
    decode_or_refuse(MSGPACK, msgspec.msgpack.encode(frame))


# --- MessagePack carries the objects JSON carries ------------------------------------------


@given(frame=server_frames | client_frames)
def test_msgpack_bytes_hold_the_json_objects(frame: Any) -> None:
    assert msgspec.msgpack.decode(MSGPACK.encode(frame)) == msgspec.json.decode(JSON.encode(frame))


def test_msgpack_times_are_rfc3339_strings() -> None:
    when = datetime(2024, 5, 1, 12, 0, 0, 5, tzinfo=UTC)
    frame = msgspec.msgpack.decode(MSGPACK.encode(EventFrame(1, when, Token("a"))))
    assert frame["ts"] == "2024-05-01T12:00:00.000005Z"


def test_msgpack_still_reads_timestamps_in_time_fields() -> None:
    when = datetime(2024, 1, 1, tzinfo=UTC)
    message = {"role": "user", "content": "x", "created_at": when}
    data = msgspec.msgpack.encode({"type": "message", "message": message})
    assert MSGPACK.decode_client(data).message.created_at == when


def test_raw_payloads_hold_json_in_both_codecs() -> None:
    """An event's stored JSON (StoredEvent.event_json) goes into frames of either codec."""
    when = datetime(2024, 1, 1, tzinfo=UTC)
    raw = msgspec.Raw(msgspec.json.encode(Token("pre")))
    for codec in CODECS:
        assert codec.decode_server(codec.encode(EventFrame(1, when, raw))) == (
            EventFrame(1, when, Token("pre"))
        )


def test_objects_without_a_wire_form_are_refused() -> None:
    for codec in CODECS:
        with pytest.raises(TypeError):
            codec.encode(object())


def test_server_extra_values_look_alike_in_both_codecs() -> None:
    extra = {"b": b"\x00", 1: "int key"}
    assert msgspec.msgpack.decode(MSGPACK.encode(extra)) == msgspec.json.decode(JSON.encode(extra))
