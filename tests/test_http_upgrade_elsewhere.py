"""An ``Upgrade`` header on a path that opens no WebSocket, on a real server
(server/app.py): only a WebSocket opening handshake (a GET in HTTP/1.1 whose
``Upgrade`` names ``websocket`` and whose ``Connection`` names ``upgrade``) is refused
there as one, 404 ``no such endpoint``; any other request is answered as if the header
were not there. RFC 9110 7.8 has a server ignore ``Upgrade`` in an HTTP/1.0 request;
``/healthz`` answered 404 to it, a ``POST`` got 404 rather than 405, a ``HEAD`` 404
rather than its GET's status, and ``Upgrade: notwebsocket`` passed for ``websocket``."""

from __future__ import annotations

import pytest

from tests.http_support import error_of, raw_http
from tests.support import run_server

HOST = b"Host: 127.0.0.1\r\n"
OFFER = b"Upgrade: websocket\r\nConnection: Upgrade\r\n"


@pytest.mark.parametrize(
    ("request_line", "headers", "status"),
    [
        (b"GET /healthz HTTP/1.0", OFFER, 200),  # RFC 9110 7.8: ignored in HTTP/1.0
        (b"GET /healthz HTTP/1.1", b"Upgrade: websocket\r\n", 200),  # not named in Connection
        (b"GET /healthz HTTP/1.1", b"Upgrade: notwebsocket\r\nConnection: Upgrade\r\n", 200),
        (b"HEAD /healthz HTTP/1.1", OFFER, 200),  # only GET opens a WebSocket
        (b"GET /api/v1/sessions/nope HTTP/1.0", OFFER, 404),  # the session's own 404
        (b"POST /healthz HTTP/1.1", OFFER, 405),
    ],
)
async def test_an_upgrade_header_that_opens_nothing_is_ignored(
    request_line: bytes, headers: bytes, status: int
) -> None:
    async with run_server() as server:
        got, answer_headers, body = await raw_http(
            server, request_line + b"\r\n" + HOST + headers + b"\r\n"
        )
        assert got == status, (request_line, headers, got, body)
        if status == 200 and request_line.startswith(b"GET"):
            assert body == b"ok\n"
        if status == 404:
            assert error_of(answer_headers, body)["message"] == "session not found"
        if status == 405:
            assert answer_headers["allow"] == "GET, HEAD"


async def test_a_websocket_handshake_to_another_path_is_still_404() -> None:
    async with run_server() as server:
        handshake = (
            b"GET /healthz HTTP/1.1\r\n" + HOST + OFFER
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )  # fmt: skip
        status, headers, body = await raw_http(server, handshake)
        assert status == 404 and error_of(headers, body)["message"] == "no such endpoint"
