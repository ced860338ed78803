"""Text that is not valid UTF-8, in each codec, against a real server (docs/protocol.md,
Frames: general rules, Unknown fields). JSON: a text frame is checked whole by the
WebSocket layer (RFC 6455 8.1), closed 1007 wherever the bad byte is, an unknown field
included. MessagePack: where the server reads a string (a typed field, a free-form
value, a map key there) it is a frame that cannot be decoded, ``bad_request`` without
``id``, the connection left open; an unknown field is skipped unread, as PROTOCOL.md's
"unknown fields are ignored" has it, whatever it holds (as it may hold binary data or
an extension type), and the request is answered."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tests.support import attach, run_server

BAD_TEXT = b"\xa2\xff\xfe"  # a MessagePack str of 2 bytes that are no UTF-8
MALFORMED = "malformed frame: Invalid UTF-8 encoded string"


def encode(frame: dict[str, Any], replaced: str) -> bytes:
    """``frame`` in MessagePack, the str ``replaced`` (2 ASCII characters, whether a
    key or a value) made the 2 bytes of BAD_TEXT."""
    data = msgspec.msgpack.encode(frame)
    marker = msgspec.msgpack.encode(replaced)
    assert data.count(marker) == 1 and len(replaced) == 2
    return data.replace(marker, BAD_TEXT)


READ = {
    "a typed field": {"type": "event", "id": 1, "event": {"type": "token", "content": "@@"}},
    "a free-form value": {
        "type": "event",
        "id": 1,
        "event": {"type": "custom", "name": "n", "data": {"k": "@@"}},
    },
    "a free-form key": {
        "type": "event",
        "id": 1,
        "event": {"type": "custom", "name": "n", "data": {"@@": 1}},
    },
    "a message's metadata key": {
        "type": "message",
        "id": 1,
        "message": {"role": "user", "content": "c", "metadata": {"@@": 1}},
    },
}

SKIPPED = {
    "an unknown field's value": {"type": "ping", "id": 1, "x": "@@"},
    "a key in an unknown field": {"type": "ping", "id": 1, "x": {"@@": [1]}},
    "an unknown field's name": {"type": "ping", "id": 1, "@@": 1},
    "an unknown field of an event": {
        "type": "event",
        "id": 1,
        "event": {"type": "token", "content": "t", "x": ["@@"]},
    },
}


@pytest.mark.parametrize("frame", READ.values(), ids=READ.keys())
async def test_messagepack_text_the_server_reads_is_a_bad_request(frame: dict[str, Any]) -> None:
    async with run_server() as server, attach(server, msgpack=True) as (peer, _):
        await peer.ws.send(encode(frame, "@@"))
        error = await peer.recv()
        assert error == {"type": "error", "code": "bad_request", "message": MALFORMED}
        assert (await peer.request({"type": "ping", "id": 2}, "pong"))["id"] == 2
        page = await peer.request({"type": "events", "id": 3}, "events")
        assert page["events"] == []  # nothing of it was stored


@pytest.mark.parametrize("frame", SKIPPED.values(), ids=SKIPPED.keys())
async def test_messagepack_skips_an_unknown_field_unread(frame: dict[str, Any]) -> None:
    async with run_server() as server, attach(server, msgpack=True) as (peer, _):
        await peer.ws.send(encode(frame, "@@"))
        answer = await peer.recv()
        assert answer["type"] in ("pong", "ack") and answer["id"] == 1, answer
        if answer["type"] == "ack":
            page = await peer.request({"type": "events", "id": 3}, "events")
            assert [record["event"] for record in page["events"]] == [
                {"type": "token", "content": "t"}  # the unknown field dropped
            ]


@pytest.mark.parametrize("frame", SKIPPED.values(), ids=SKIPPED.keys())
async def test_json_closes_1007_at_invalid_text_in_an_unknown_field(
    frame: dict[str, Any],
) -> None:
    data = msgspec.json.encode(frame).replace(b"@@", b"\xff\xfe")
    async with run_server() as server, attach(server) as (peer, _):
        await peer.ws.send(data, text=True)  # the websockets client checks nothing it sends
        code, frames = await peer.closed()
    assert code == 1007 and frames == []
