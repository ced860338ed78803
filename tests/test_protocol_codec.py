"""Codecs (protocol/codec.py): round trips in both formats, and MessagePack carrying
the objects JSON carries.

Properties: any valid frame encodes and decodes to an equal frame in JSON and in
MessagePack, and the two codecs carry alike what they accept. Hostile input is in
test_protocol_codec_hostile.py, the bounds of values in test_protocol_codec_values.py,
fuzzing in test_protocol_codec_fuzz.py.
"""

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bamboo_session.protocol import (
    Complete,
    Custom,
    ErrorCode,
    ErrorEvent,
    Message,
    MessageEvent,
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
    PublishEvent,
    PublishMessage,
    StateRequest,
    Welcome,
)
from bamboo_session.protocol.log_lines import decode_stored_event, encode_stored_event
from tests.codec_support import CODECS

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
