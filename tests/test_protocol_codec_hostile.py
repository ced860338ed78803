"""Codecs (protocol/codec.py) given hostile client input: malformed JSON and
MessagePack, integers beyond 64 bits, MessagePack values JSON cannot carry. Each is
refused as ``ProtocolError(bad_request)``, with the request id salvaged where the frame
has a usable one; unknown fields are ignored.
"""

import json
import tracemalloc
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.frames import MAX_BATCH_ITEMS, Ping, PublishEvent
from tests.codec_support import bad, jbad


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


def test_no_id_is_salvaged_from_a_frame_the_decoder_cannot_read_whole() -> None:
    """docs/protocol.md, "A frame that cannot be decoded": a valid id is left out of
    the error when the frame's own MessagePack map has a key that is not a string, or nests
    deeper than the decoder reads."""
    non_str_key = msgspec.msgpack.encode({"type": "ping", "id": 9, 5: 1})
    assert bad(MSGPACK, non_str_key).request_id is None
    # Deeper in, the id is read: the frame's own map is whole.
    nested_key = msgspec.msgpack.encode({"type": "event", "id": 9, "event": {5: 1}})
    assert bad(MSGPACK, nested_key).request_id == 9
    deep = '{"type": "ping", "id": 9, "x": ' + "[" * 5000 + "]" * 5000 + "}"
    refusal = bad(JSON, deep)
    assert refusal.request_id is None
    assert refusal.message.endswith(
        "maximum recursion depth exceeded while deserializing an object"
    )


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


LONE_HIGH_HALF = "invalid utf-16 surrogate pair"
TRUNCATED = "malformed frame: Input data was truncated"
RUN = 1 << 20  # a frame's worth of backslashes (--max-frame-bytes, 1 MiB by default)


@pytest.mark.parametrize(
    ("backslashes", "after", "says"),
    [
        (1, "ud800", LONE_HIGH_HALF),
        (2, "ud800", TRUNCATED),  # an escaped backslash, then the text "ud800"
        (3, "ud800", LONE_HIGH_HALF),
        (4, "ud800", TRUNCATED),
        (1, "ud83d\\ude00", TRUNCATED),  # a pair, then a frame cut short
        (RUN - 1, "ud800", LONE_HIGH_HALF),
        (RUN, "ud800", TRUNCATED),
        (RUN, "", TRUNCATED),
    ],
)
def test_a_cut_short_json_frame_names_a_lone_high_half_after_an_odd_run_of_backslashes(
    backslashes: int, after: str, says: str
) -> None:
    """msgspec says "truncated" for both: an escape is a backslash after an even run of
    escaped ones, at any length of run a frame may hold."""
    frame = '{"type":"event","event":{"type":"token","content":"' + "\\" * backslashes + after
    for data in (frame, frame.encode()):
        assert says in bad(JSON, data).message


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


def test_a_msgpack_batch_over_the_ceiling_is_refused_before_its_items_are_built() -> None:
    # A million empty items fit in a 1 MiB frame: decoded whole, they held 64 MB before
    # the server read their count. The array's header says how many come: refused there.
    frame = {"type": "batch", "id": 7, "items": [{}] * 1_000_000}
    data = msgspec.msgpack.encode(frame)
    assert len(data) < 1 << 20
    tracemalloc.start()
    try:
        refused = bad(MSGPACK, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert refused.request_id == 7
    assert f"length <= {MAX_BATCH_ITEMS}" in str(refused)
    # At the ceiling a batch still decodes (a server may allow up to it).
    at_most = {"type": "batch", "items": [{"event": {"type": "token", "content": ""}}] * 10}
    at_most["items"] *= MAX_BATCH_ITEMS // 10
    assert len(MSGPACK.decode_client(msgspec.msgpack.encode(at_most)).items) == MAX_BATCH_ITEMS
