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


def test_one_input(data: bytes) -> None:
    if not data:
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


def _seeds() -> list[bytes]:
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
    frames: list[dict[str, object]] = [
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
    server_frames: list[dict[str, object]] = [
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
    seeds = []
    for frame in frames:
        seeds += [b"\x00" + json.dumps(frame).encode(), b"\x01" + msgspec.msgpack.encode(frame)]
    for frame in server_frames:
        seeds += [b"\x04" + json.dumps(frame).encode(), b"\x05" + msgspec.msgpack.encode(frame)]
    return seeds


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    words = ["hello", "event", "message", "batch", "history", "events", "state", "ping"]
    words += ["token", "custom", "tool_start", "created_at", "metadata", "tool_calls", "items"]
    words += ["key", "id", "limit", "before", "after_seq", "last_seq", "epoch", "role"]
    tokens = [f'"{word}"' for word in words]
    tokens += ["1e999", "-0", "9223372036854775808", "\\ud800", "9999-12-31T23:59:59-23:59"]
    run("codec", test_one_input, _seeds(), tokens)
