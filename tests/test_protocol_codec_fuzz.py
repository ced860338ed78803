"""Codecs (protocol/codec.py) fuzzed: arbitrary bytes, text, and wild JSON and
MessagePack frames. ``decode_client`` raises nothing but ``ProtocolError(bad_request)``,
and whatever it accepts is carried alike by both codecs.
"""

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bamboo_session.protocol import ErrorCode, ProtocolError
from bamboo_session.protocol.codec import JSON, MSGPACK, Codec

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
