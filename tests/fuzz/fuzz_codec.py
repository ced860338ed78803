"""atheris harness: the frame decoders of both subprotocols (protocol/codec.py).

A peer's frame, text on ``bamboo.v1`` or binary on ``bamboo.v1.msgpack`` (and each of
the wrong type), every frame type and batches: ``decode_request`` raises nothing but
``ProtocolError(bad_request)``, and a frame it accepts comes back equal through either
codec's encoder (decode(encode(x)) == x, and both codecs carry the same objects). A
server's frame, as a client reads it: ``decode_server`` raises ``msgspec.DecodeError``
and nothing else (link.py and handshake.py catch that), and round-trips too.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris
import msgspec
from harness import run

with atheris.instrument_imports(include=["bamboo_session"]):
    from bamboo_session.protocol.codec import JSON, MSGPACK, Codec
    from bamboo_session.protocol.errors import ErrorCode, ProtocolError


def _as_frame(codec: Codec, wire: bytes) -> bytes | str:
    return wire.decode() if codec.text else wire


def check_client(codec: Codec, data: bytes | str) -> None:
    try:
        frame, weight = codec.decode_request(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST, exc
        return
    assert weight >= len(data), (weight, data)
    for other in (JSON, MSGPACK):
        again = other.decode_frame(_as_frame(other, other.encode(frame)))
        assert again == frame, (other, frame, again)


def check_server(codec: Codec, data: bytes) -> None:
    try:
        frame = codec.decode_server(data)
    except msgspec.DecodeError:
        return
    again = codec.decode_server(codec.encode(frame))
    assert again == frame, (codec, frame, again)


# Values that sit at the edges of what the protocol takes, for the structured mode.
SPECIAL = (
    None, True, 0, -1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 0.5, -0.0, 1e308,
    "", "x" * 129, "\ud800", "\x00", "2024-01-02T03:04:05Z", "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59", "2024-02-30T00:00:00Z", [], {}, {"": None}, [[[]]],
)  # fmt: skip


def mutated(value: Any, fdp: atheris.FuzzedDataProvider, depth: int = 0) -> Any:
    """``value`` with some of its parts replaced, as ``fdp`` chooses: by a special value,
    a fuzzed string or integer, or dropped (a dict's key)."""
    choice = fdp.ConsumeIntInRange(0, 9) if fdp.remaining_bytes() else 0
    if choice == 1:
        return SPECIAL[fdp.ConsumeIntInRange(0, len(SPECIAL) - 1)]
    if choice == 2:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if choice == 3:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 10))
    if depth > 8:
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if fdp.remaining_bytes() and fdp.ConsumeIntInRange(0, 15) == 0:
                continue
            out[key] = mutated(item, fdp, depth + 1)
        return out
    if isinstance(value, list):
        return [mutated(item, fdp, depth + 1) for item in value]
    return value


def check_structured(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    frame = mutated(FRAMES[fdp.ConsumeIntInRange(0, len(FRAMES) - 1)], fdp)
    try:
        text = json.dumps(frame)
    except ValueError:
        return
    check_client(JSON, text)
    try:
        packed = msgspec.msgpack.encode(frame)
    except (OverflowError, UnicodeEncodeError):
        return  # an integer MessagePack has no room for, a lone surrogate: unsendable
    check_client(MSGPACK, packed)


def one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] >= 0xF0:
        check_structured(data[1:])
        return
    mode, body = data[0] % 6, data[1:]
    if mode == 0:
        try:
            text = body.decode()
        except UnicodeDecodeError:
            return  # websockets refuses a text frame that is not UTF-8 before us
        check_client(JSON, text)
    elif mode == 1:
        check_client(MSGPACK, body)
    elif mode == 2:
        check_client(JSON, body)  # a binary frame on the JSON subprotocol
    elif mode == 3:
        check_client(MSGPACK, body.decode("utf-8", "replace"))  # a text one on msgpack
    elif mode == 4:
        check_server(JSON, body)
    else:
        check_server(MSGPACK, body)


def _frames() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    message = {
        "role": "assistant",
        "content": "hi",
        "created_at": "2024-01-02T03:04:05+02:00",
        "metadata": {"a": [1, 2.5, None, True]},
        "tool_calls": [{"id": "c1", "name": "ls", "arguments": {"path": "/"}}],
    }
    events = [
        {"type": "token", "text": "x"},
        {"type": "thinking", "text": "hm"},
        {"type": "message", "message": message},
        {"type": "tool_start", "tool_call_id": "c1", "name": "ls", "arguments": {"x": 1}},
        {"type": "tool_complete", "tool_call_id": "c1", "result": "ok"},
        {"type": "tool_error", "tool_call_id": "c1", "error": "no"},
        {"type": "complete"},
        {"type": "error", "message": "bad", "code": "x"},
        {"type": "state_change", "state": "idle"},
        {"type": "custom", "name": "n", "data": {"k": [1, {"z": "y"}]}},
    ]
    frames: list[dict[str, Any]] = [
        {"type": "hello", "token": "t", "user_id": "u", "title": "T", "create": True},
        {"type": "hello", "last_seq": 3, "epoch": "e", "role": "agent", "id": 1},
        {"type": "message", "message": message, "id": "m", "key": "k"},
        {"type": "batch", "items": [{"event": e, "key": str(i)} for i, e in enumerate(events)]},
        {"type": "batch", "items": [{"message": message}], "id": 7},
        {"type": "history", "id": 2, "limit": 5, "before": 9},
        {"type": "events", "id": 3, "after_seq": 1, "limit": None},
        {"type": "state", "state": "closed", "id": 4},
        {"type": "ping", "id": 5},
    ]
    frames += [{"type": "event", "event": e, "id": i} for i, e in enumerate(events)]
    session = {
        "id": "s",
        "created_at": "2024-01-02T03:04:05Z",
        "updated_at": "2024-01-02T03:04:05Z",
        "last_activity_at": "2024-01-02T03:04:05Z",
        "state": "active",
    }
    server_frames: list[dict[str, Any]] = [
        {
            "type": "welcome",
            "connection_id": "c",
            "session": session,
            "epoch": "e",
            "last_seq": 0,
            "resumed": False,
            "replay": 0,
        },
        {"type": "ack", "id": 1, "seq": 2},
        {"type": "event", "seq": 1, "ts": "2024-01-02T03:04:05Z", "event": events[0]},
        {"type": "error", "code": "bad_request", "message": "m", "id": None},
        {"type": "pong", "id": 5},
    ]
    return frames, server_frames


FRAMES, SERVER_FRAMES = _frames()


def _seeds() -> list[bytes]:
    seeds = [bytes([0xF0, index]) + bytes(range(64)) for index in range(len(FRAMES))]
    for frame in FRAMES:
        seeds += [b"\x00" + json.dumps(frame).encode(), b"\x01" + msgspec.msgpack.encode(frame)]
    for frame in SERVER_FRAMES:
        seeds += [b"\x04" + json.dumps(frame).encode(), b"\x05" + msgspec.msgpack.encode(frame)]
    return seeds


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    words = ["hello", "event", "message", "batch", "history", "events", "state", "ping"]
    words += ["token", "custom", "tool_start", "created_at", "metadata", "tool_calls", "items"]
    words += ["key", "id", "limit", "before", "after_seq", "last_seq", "epoch", "role"]
    tokens = [f'"{word}"' for word in words]
    tokens += ["1e999", "-0", "9223372036854775808", "\\ud800", "9999-12-31T23:59:59-23:59"]
    run("codec", one_input, _seeds(), tokens)
