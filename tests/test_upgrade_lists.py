"""An upgrade's ``Connection`` and ``Upgrade`` read as the lists they are
(server/upgrade_lists.py), against a real server over a raw socket: a list that names
``upgrade`` and ``websocket`` among others, or beside an empty value, opens a session;
what RFC 6455 refuses is still refused; a list that names no ``websocket`` (``Upgrade:
notwebsocket``, ``websocketx``) is no upgrade, answered as a request without Upgrade.
Before, two ``Connection`` lines, one of them empty, got 400, ``Upgrade: websocket,
h2c`` got 426, and ``notwebsocket`` went to websockets' handshake as an upgrade (taken
for one by a substring), refused in other words than a request without it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from tests.http_support import raw_http
from tests.support import run_server

HEAD = (
    b"GET /api/v1/stream/lists HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
TIMEOUT = 5.0

WEBSOCKET = b"Upgrade: websocket\r\n"
ACCEPTED = {
    "a second Connection line, empty": b"Connection: Upgrade\r\nConnection:\r\n" + WEBSOCKET,
    "an empty Connection line first": (
        b"Connection: \r\nConnection: keep-alive, Upgrade\r\n" + WEBSOCKET
    ),
    "a Connection line of commas beside one": (
        b"Connection: , ,\r\nConnection: upgrade\r\n" + WEBSOCKET
    ),
    "websocket first of two protocols": b"Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n",
    "websocket after another, any case": (
        b"Connection: Upgrade\r\nUpgrade: h2c, HTTP/2.0 ,WebSocket\r\n"
    ),
    "empty elements around websocket": b"Connection: Upgrade\r\nUpgrade: ,websocket,,\r\n",
}

# What RFC 6455 4.2.1 refuses, refused still: the status and the refusal's message.
WEBSOCKET_ONLY = (
    "this is a WebSocket endpoint: an upgrade needs Connection: Upgrade and Upgrade: websocket"
)
REFUSED: dict[str, tuple[bytes, int, str]] = {
    "an empty Connection line and no upgrade option": (
        b"Connection: keep-alive\r\nConnection:\r\nUpgrade: websocket\r\n",
        426,
        WEBSOCKET_ONLY,
    ),
    "a Connection of commas alone": (
        b"Connection: ,,,\r\nUpgrade: websocket\r\n",
        426,
        WEBSOCKET_ONLY,
    ),
    "a malformed Connection option": (
        b"Connection: Upgrade x\r\nUpgrade: websocket\r\n",
        400,
        "the Connection header is not well formed",
    ),
    "websocket beside a malformed protocol": (
        b"Connection: Upgrade\r\nUpgrade: websocket, h2c x\r\n",
        400,
        "the Upgrade header is not well formed",
    ),
}
# An Upgrade list that names another protocol than websocket, a name that contains
# it among them: the request is no upgrade, and gets what one without Upgrade gets.
NAMES_NO_WEBSOCKET = {
    "websocket with a version, another protocol": b"Upgrade: websocket/13, h2c\r\n",
    "websocket inside a longer protocol name": b"Upgrade: websockets\r\n",
    "websocket at the end of another name": b"Upgrade: notwebsocket\r\n",
    "websocket at the start of another name": b"Upgrade: websocketx\r\n",
}


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """One unmasked text frame of the server's, decoded (a small one: the welcome)."""
    first, second = await reader.readexactly(2)
    assert first & 0x0F == Opcode.TEXT.value, first
    length = second & 0x7F
    assert length < 127, "a welcome is small"
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    frame: dict[str, Any] = json.loads(await reader.readexactly(length))
    return frame


async def exchange(port: int, headers: bytes) -> tuple[bytes, dict[str, Any] | None, bytes]:
    """An upgrade sent with ``headers``: the answer's head, the welcome to a hello sent
    once upgraded (None when refused), and a refusal's body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(HEAD + headers + b"\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        if not head.startswith(b"HTTP/1.1 101 "):
            return head, None, await asyncio.wait_for(reader.read(), TIMEOUT)
        hello = json.dumps({"type": "hello", "create": True}).encode()
        writer.write(Frame(Opcode.TEXT, hello).serialize(mask=True))
        return head, await asyncio.wait_for(read_frame(reader), TIMEOUT), b""
    finally:
        writer.close()


@pytest.mark.parametrize("headers", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_a_list_that_names_the_upgrade_opens_a_session(headers: bytes) -> None:
    async with run_server() as server:
        head, welcome, _ = await exchange(server.port, headers)
    assert head.startswith(b"HTTP/1.1 101 "), head
    # The 101 names the one protocol switched to (RFC 9110 7.8).
    assert b"\r\nUpgrade: websocket\r\n" in head and b"\r\nConnection: Upgrade\r\n" in head
    assert welcome is not None and welcome["type"] == "welcome", welcome
    assert welcome["session"]["id"] == "lists"


@pytest.mark.parametrize("kind", REFUSED.keys())
async def test_what_rfc_6455_refuses_is_refused_still(kind: str) -> None:
    headers, status, message = REFUSED[kind]
    async with run_server() as server:
        head, welcome, body = await exchange(server.port, headers)
    assert welcome is None
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert json.loads(body)["error"]["message"] == message
    if status == 426:
        assert b"\r\nUpgrade: websocket\r\n" in head


@pytest.mark.parametrize("kind", NAMES_NO_WEBSOCKET.keys())
@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /api/v1/stream/lists HTTP/1.1",
        b"HEAD /api/v1/stream/lists HTTP/1.1",
        b"GET /api/v1/stream HTTP/1.0",
        b"POST /api/v1/stream/lists HTTP/1.1",
    ],
)
async def test_an_upgrade_that_names_no_websocket_is_answered_as_none(
    kind: str, request_line: bytes
) -> None:
    upgrade = NAMES_NO_WEBSOCKET[kind]
    handshake = b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    start = request_line + b"\r\nHost: 127.0.0.1\r\n" + handshake
    async with run_server() as server:
        plain = await raw_http(server, start + b"\r\n")
        offered = await raw_http(server, start + upgrade + b"\r\n")
    status, headers, body = offered
    assert (status, body) == (plain[0], plain[2]), (offered, plain)
    for name in ("upgrade", "connection", "allow", "content-type"):
        assert headers.get(name) == plain[1].get(name), (name, offered, plain)
