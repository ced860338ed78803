"""The streamed whole history (server/whole_history.py) on the wire, read by raw
sockets from a real server: an HTTP/1.0 request gets its body without chunked framing
(RFC 9112 6.1: Transfer-Encoding only to HTTP/1.1), ended by the close; a request
pipelined behind a streamed answer is not answered, nor read into its body."""

from __future__ import annotations

import asyncio
import json
import socket

from tests.memory_support import KIB
from tests.support import run_server
from tests.test_whole_history import stored_session


def exchange(port: int, requests: bytes) -> tuple[str, bytes]:
    """The head (its lines joined by newlines) and the raw body of the answer to
    ``requests``, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as peer:
        peer.sendall(requests)
        answer = b""
        while chunk := peer.recv(1 << 20):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode().replace("\r\n", "\n"), body


def unchunked(body: bytes) -> bytes:
    """A chunked body's bytes, checking its framing, the last chunk included."""
    data = b""
    while True:
        size_line, body = body.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            assert body == b"\r\n", "bytes after the last chunk"
            return data
        assert body[size : size + 2] == b"\r\n"
        data, body = data + body[:size], body[size + 2 :]


async def test_an_http_1_0_request_gets_the_history_without_chunked_framing() -> None:
    # An HTTP/1.0 client knows no chunks: the framing ("4000\r\n…") was read as part
    # of the JSON, which then did not parse.
    async with run_server(max_page_bytes=16 * KIB) as server:
        expected = await stored_session(server, "old", 300, size=KIB)  # many pages
        request = b"GET /api/v1/sessions/old HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        head, body = await asyncio.to_thread(exchange, server.port, request)
        assert head.startswith("HTTP/1.1 200 ")
        lower = head.lower()
        assert "transfer-encoding" not in lower and "connection: close" in lower
        assert json.loads(body)["messages"] == expected
        # In absolute-form too: it was rebuilt as a request of HTTP/1.1.
        target = f"http://127.0.0.1:{server.port}/api/v1/sessions/old"
        head, body = await asyncio.to_thread(
            exchange, server.port, f"GET {target} HTTP/1.0\r\n\r\n".encode()
        )
        assert "transfer-encoding" not in head.lower(), head
        assert json.loads(body)["messages"] == expected
        # HEAD alike: the GET's head, without Transfer-Encoding.
        request = b"HEAD /api/v1/sessions/old HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        head, body = await asyncio.to_thread(exchange, server.port, request)
        assert head.startswith("HTTP/1.1 200 ") and body == b""
        assert "transfer-encoding" not in head.lower()
        # HTTP/1.1 still gets chunks.
        request = b"GET /api/v1/sessions/old HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        head, body = await asyncio.to_thread(exchange, server.port, request)
        assert "transfer-encoding: chunked" in head.lower()
        assert json.loads(unchunked(body))["messages"] == expected


async def test_a_request_pipelined_behind_a_streamed_answer_is_not_answered() -> None:
    # One request per connection (Connection: close): the second is neither answered
    # nor taken into the first one's body.
    async with run_server(max_page_bytes=16 * KIB) as server:
        expected = await stored_session(server, "first", 300, size=KIB)
        await stored_session(server, "second", 3)
        requests = b"".join(
            f"GET /api/v1/sessions/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            for name in ("first", "second")
        )
        head, body = await asyncio.to_thread(exchange, server.port, requests)
        assert "connection: close" in head.lower()
        assert json.loads(unchunked(body))["messages"] == expected
        assert b"HTTP/1.1" not in body
        assert server.unread_answers.used == 0
