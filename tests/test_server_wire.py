"""Frame types and encodings on the wire: a frame of the other type than the
subprotocol's gets ``bad_request``; a text frame that is not UTF-8 closes with 1007
(RFC 6455 section 8.1)."""

from __future__ import annotations

import json

from tests.support import attach, open_peer, run_server


async def test_a_binary_frame_on_the_json_subprotocol_is_a_bad_request() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        await peer.ws.send(json.dumps({"type": "ping", "id": 7}).encode())
        error = await peer.recv()
        assert error["type"] == "error" and error["code"] == "bad_request", error
        assert "binary" in error["message"] and error.get("id") == 7
        assert (await peer.request({"type": "ping", "id": 8}, "pong"))["id"] == 8


async def test_a_text_frame_on_the_msgpack_subprotocol_is_a_bad_request() -> None:
    async with run_server() as server, attach(server, msgpack=True) as (peer, _):
        await peer.ws.send(json.dumps({"type": "ping", "id": 7}))
        error = await peer.recv()
        assert error["type"] == "error" and error["code"] == "bad_request", error
        assert "text" in error["message"] and error.get("id") == 7  # read as the JSON it is
        assert (await peer.request({"type": "ping", "id": 8}, "pong"))["id"] == 8


async def test_a_binary_hello_on_json_is_refused_like_any_bad_hello() -> None:
    async with run_server() as server, open_peer(server) as peer:
        await peer.ws.send(json.dumps({"type": "hello"}).encode())
        code, frames = await peer.closed()
        assert code == 1008
        assert [f["code"] for f in frames] == ["bad_request"]


async def test_invalid_utf8_in_a_text_frame_closes_1007() -> None:
    async with run_server() as server, attach(server) as (peer, _):
        # The websockets client checks nothing it sends: a text frame of raw bytes.
        await peer.ws.send(b'{"type": "ping", "id": "\xff\xfe"}', text=True)
        code, _ = await peer.closed()
        assert code == 1007


async def test_invalid_utf8_in_hello_closes_1007() -> None:
    async with run_server() as server, open_peer(server) as peer:
        await peer.ws.send(b'{"type": "hello", "title": "\xc3"}', text=True)
        code, _ = await peer.closed()
        assert code == 1007
