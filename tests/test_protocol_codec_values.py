"""Codecs (protocol/codec.py): the bounds of what a client frame's values may be.
Free-form values (nesting depth, how many a frame or a batch holds, and the weight they
add), keys (an empty one is a key; length in characters), and message times (moved to
UTC, refused when naive or outside its range).
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol import Message, Role
from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.frames import PublishBatch, PublishEvent, PublishMessage
from bamboo_session.protocol.free_form import (
    FREE_VALUE_BYTES,
    MAX_FREE_VALUES,
    MAX_NESTING,
    WIDEST_PER_BYTE,
    free_form_problem,
)
from tests.codec_support import CODECS, bad, jbad


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
        # A plain token holds none: it weighs its bytes in JSON; in MessagePack (never
        # plain ASCII) a bound of what its strings may hold, 9 times its bytes.
        token = encode({"type": "event", "id": 2, "event": {"type": "token", "content": "x"}})
        bound = len(token) if codec is JSON else WIDEST_PER_BYTE * len(token)
        assert codec.decode_request(token)[1] == bound


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


def test_a_batch_weighs_each_item_as_a_value() -> None:
    """A batch of plain tokens holds no free-form value, yet each item costs about what
    one does to decode and check: each weighs FREE_VALUE_BYTES."""
    item = {"event": {"type": "token", "content": "x"}}
    for codec in CODECS:
        encode = msgspec.msgpack.encode if codec is MSGPACK else json.dumps
        data = encode({"type": "batch", "id": 1, "items": [item] * 10})
        assert codec.decode_request(data)[1] == len(data) + 10 * FREE_VALUE_BYTES


def test_a_refused_frame_weighs_the_most_values_its_bytes_could_hold() -> None:
    """Refused past the bound, a frame was decoded whole but counted only to the bound:
    its weight (what the server charges to its byte rate) assumes the most values its
    bytes could hold, a value a byte in MessagePack, at most one per separator or
    opening (and two bytes) in JSON, so a long string with one bad field weighs about
    its bytes."""
    values = MAX_FREE_VALUES + 1
    dense = json.dumps(custom(rows(values)), separators=(",", ":"))
    assert JSON.refused_weight(dense) >= len(dense) + values * FREE_VALUE_BYTES
    assert JSON.refused_weight(dense.encode()) == JSON.refused_weight(dense)
    packed = msgspec.msgpack.encode(custom(rows(values)))
    assert MSGPACK.refused_weight(packed) == len(packed) * (1 + FREE_VALUE_BYTES)
    prose = json.dumps(
        {"type": "event", "id": 1, "key": 5, "event": {"type": "token", "content": "a" * 100_000}}
    )
    assert bad(JSON, prose).request_id == 1
    assert JSON.refused_weight(prose) < len(prose) + 10 * FREE_VALUE_BYTES
