"""A client that shuts down its sending side right after its request (a TCP half-close,
RFC 9112 9.6: ``printf 'GET …' | nc -N``, an HTTP/1.0 client) still gets its whole
answer, then the server's end of stream, on every endpoint; an upgrade sent so gets
its 101, then the connection ends (the peer ended its WebSocket with its stream), with
no handler run and nothing logged. Real server, raw sockets on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import pytest
from websockets.frames import Frame, Opcode

from tests.memory_support import KIB
from tests.support import run_server
from tests.test_server_lifecycle import eventually
from tests.test_whole_history import stored_session
from tests.test_whole_history_wire import unchunked

UPGRADE = (
    "GET /api/v1/stream/{session} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bamboo.v1\r\n\r\n"
)


async def half_closed(port: int, request: bytes) -> bytes:
    """What the in-process server on ``port`` sends to a peer that sends ``request`` and
    then its end of stream (``shutdown(SHUT_WR)``), read to the server's end of stream.
    Both are sent from the server's own loop, blocked meanwhile: the server reads its
    end of stream with the request, as on a quiet machine, where a peer in a thread
    could be put off between the two (past TCP_CORK's 200 ms ceiling on a busy one),
    the request then read, and acted on, before the FIN came."""
    peer = socket.create_connection(("127.0.0.1", port), timeout=10)
    with peer:
        peer.sendall(request)
        peer.shutdown(socket.SHUT_WR)
        return await asyncio.to_thread(read_to_end, peer)


def read_to_end(peer: socket.socket) -> bytes:
    answer = b""
    while chunk := peer.recv(1 << 20):
        answer += chunk
    return answer


def get(path: str, method: str = "GET", version: str = "1.1") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n\r\n".encode()


def whole_body(answer: bytes) -> tuple[int, bytes]:
    """The status and body of ``answer``, checked complete against its framing."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    if "content-length" in headers:
        assert len(body) == int(headers["content-length"]), answer[:300]
    elif headers.get("transfer-encoding") == "chunked":
        body = unchunked(body)
    return int(lines[0].split()[1]), body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/api/v1/stats", 200),
        ("/api/v1/sessions", 200),
        ("/api/v1/sessions/s1?limit=5", 200),
        ("/api/v1/sessions/s1/events", 200),
        ("/api/v1/sessions/s1", 200),  # the whole history, streamed
        ("/api/v1/sessions/missing", 404),
        ("/api/v1/stream/s1", 426),  # a plain GET of the WebSocket endpoint
        ("/nowhere", 404),
    ],
)
async def test_a_request_followed_by_the_peers_end_of_stream_is_answered_whole(
    path: str, status: int
) -> None:
    # The end of stream went to websockets with the request: its wait for the answer
    # ended, and the connection closed unanswered (all but a /healthz answered within
    # the same turn of the loop).
    async with run_server() as server:
        await stored_session(server, "s1", 3)
        answer = await half_closed(server.port, get(path))
        got, body = whole_body(answer)
        assert got == status, answer[:300]
        if path.startswith("/api/v1/sessions/s1"):
            assert json.loads(body)  # a whole document
        head_answer = await half_closed(server.port, get(path, "HEAD"))
        assert head_answer.startswith(b"HTTP/1.1 %d " % status)
        assert head_answer.endswith(b"\r\n\r\n")
        await eventually(lambda: not server._open_connections)


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_a_whole_history_of_many_pages_is_streamed_whole_to_a_half_closed_peer(
    version: str,
) -> None:
    async with run_server(max_page_bytes=16 * KIB) as server:
        expected = await stored_session(server, "long", 300, size=KIB)  # some 20 pages
        request = get("/api/v1/sessions/long", version=version)
        answer = await half_closed(server.port, request)
        status, body = whole_body(answer)  # HTTP/1.0: no framing, ended by the close
        assert status == 200
        assert json.loads(body)["messages"] == expected
        await eventually(lambda: not server._open_connections)


async def test_an_upgrade_followed_by_the_peers_end_of_stream_gets_its_101_then_the_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The hello sent along with the request would create the session, were it read:
    # a WebSocket ends with its TCP stream (RFC 6455 7.1.5), so this one ends after its
    # 101, as one whose peer sent its end of stream right after the upgrade.
    hello = json.dumps({"type": "hello", "create": True}).encode()
    frame = Frame(Opcode.TEXT, hello).serialize(mask=True)
    caplog.set_level(logging.WARNING)
    async with run_server() as server:
        request = UPGRADE.format(session="fresh").encode() + frame
        answer = await asyncio.wait_for(half_closed(server.port, request), 5)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        assert answer.endswith(b"\r\n\r\n")  # nothing after the 101: no welcome
        await eventually(lambda: not server._open_connections)
        assert server._server is not None
        await eventually(lambda: not server._server.handler_tasks)  # no task left behind
        assert await server.manager.get_metadata("fresh") is None
        assert server.metrics.figures()["connections_opened"] == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_an_upgrade_alone_followed_by_the_peers_end_of_stream_runs_no_handler() -> None:
    # No frame behind the request: the FIN in its segment is read before the answer
    # all the same (websockets' handshake gave the loop that turn), so the upgrade ends
    # after its 101 with no handler: no connection counted, no session looked up.
    async with run_server() as server:
        request = UPGRADE.format(session="alone").encode()
        for _ in range(3):
            answer = await asyncio.wait_for(half_closed(server.port, request), 5)
            assert answer.startswith(b"HTTP/1.1 101 "), answer
            assert answer.endswith(b"\r\n\r\n")
        await eventually(lambda: not server._open_connections)
        assert server._server is not None
        await eventually(lambda: not server._server.handler_tasks)
        assert server.metrics.figures()["connections_opened"] == 0


async def test_a_half_closed_peer_in_debt_is_taken_for_gone_at_its_first_wait() -> None:
    # The rule of a whole history's wait for its peer's debt (http_pages.py): a peer
    # whose end of stream has come, with its request too, cannot be told from one that
    # closed its socket, and the answer ends there rather than wait the debt (some 5 s
    # here) for nobody: its first page, then no last chunk.
    limits: dict[str, Any] = {"rate_limit_bytes": 1_000, "rate_limit_bytes_burst": 1_000}
    async with run_server(max_page_bytes=100_000, answer_page_timeout=60, **limits) as server:
        await stored_session(server, "long", 40, size=10_000)
        started = asyncio.get_running_loop().time()
        answer = await half_closed(server.port, get("/api/v1/sessions/long"))
        assert asyncio.get_running_loop().time() - started < 3
        assert answer.startswith(b"HTTP/1.1 200 OK") and b'"messages":[' in answer
        assert not answer.endswith(b"\r\n0\r\n\r\n")  # incomplete, as every client says
