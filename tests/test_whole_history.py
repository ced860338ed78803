"""``GET /api/v1/sessions/{id}`` without ``limit`` and ``before`` answers the whole
history, as PROTOCOL.md has it, however long: streamed in chunks, a page at a time,
never held whole (server/whole_history.py, server/http_stream.py). Real servers,
real HTTP clients (urllib, http.client, a raw socket)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from typing import Any

import msgspec
import pytest

from bamboo_session.protocol.messages import Message
from bamboo_session.protocol.models import Session
from tests.memory_support import KIB
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import get, run_server
from tests.test_server_lifecycle import eventually

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on


async def stored_session(
    server: Any, session_id: str, count: int, size: int = 0, user_id: str = "u1"
) -> Any:
    """A new session of ``user_id`` with ``count`` messages (of ``size`` more bytes
    each), stored as created; its history as the store has it, decoded as a client
    would."""
    session = Session.new(session_id, user_id=user_id)
    session.messages = [Message.user(f"{session_id}-{i}" + "x" * size) for i in range(count)]
    await server.storage.create_session(session)
    stored = await server.storage.get_session_history(session_id)
    return json.loads(msgspec.json.encode(stored))


def http_client_get(port: int, path: str, method: str = "GET") -> tuple[Any, bytes]:
    """http.client's answer (the response, for its headers) and its body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


@pytest.mark.usefixtures("server_store")
async def test_a_history_of_5000_messages_is_answered_whole() -> None:
    # 413 too_large before: more than --max-history-page (1,000) messages.
    async with run_server() as server:
        expected = await stored_session(server, "long", 5000)
        path = "/api/v1/sessions/long"
        status, body = await get(server, path)  # urllib
        assert status == 200, body
        assert body["metadata"]["message_count"] == 5000
        assert body["messages"] == expected
        assert (body["start"], body["has_more"]) == (0, False)
        response, raw = await asyncio.to_thread(http_client_get, server.port, path)
        assert response.status == 200 and response.version == 11
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Length") is None
        assert json.loads(raw)["messages"] == expected
        # HEAD: the GET's status and headers, no body.
        response, raw = await asyncio.to_thread(http_client_get, server.port, path, "HEAD")
        assert (response.status, raw) == (200, b"")
        assert response.getheader("Transfer-Encoding") == "chunked"
        # Small pages: many chunks, the same document.
        assert server.unread_answers.used == 0
    async with run_server(max_page_bytes=4 * KIB) as server:
        expected = await stored_session(server, "paged", 700)
        status, body = await get(server, "/api/v1/sessions/paged")
        assert status == 200 and body["messages"] == expected
        # An empty history is a whole one too.
        await stored_session(server, "empty", 0)
        status, body = await get(server, "/api/v1/sessions/empty")
        assert status == 200 and body["messages"] == [] and body["metadata"]["message_count"] == 0


@pytest.mark.usefixtures("server_store")
async def test_a_history_of_more_than_a_mebibyte_is_answered_whole() -> None:
    # 413 before: more than --max-page-bytes (1 MiB) of messages.
    async with run_server() as server:
        expected = await stored_session(server, "big", 400, size=4 * KIB)
        response, raw = await asyncio.to_thread(
            http_client_get, server.port, "/api/v1/sessions/big"
        )
        assert response.status == 200 and len(raw) > 1024 * KIB
        body = json.loads(raw)
        assert body["messages"] == expected and body["metadata"]["message_count"] == 400


def stalled_get(port: int, path: str) -> socket.socket:
    """A peer that asks for ``path`` and then reads nothing (a tiny receive buffer)."""
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(("127.0.0.1", port))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return peer


def read_all(peer: socket.socket) -> tuple[bytes, BaseException | None]:
    """What the peer can still read, and how reading ended (None: a clean end)."""
    peer.settimeout(30)
    received = b""
    try:
        while chunk := peer.recv(1 << 20):
            received += chunk
    except OSError as exc:  # a reset: the server dropped the connection
        return received, exc
    return received, None


async def test_a_peer_that_stops_reading_holds_a_page_and_is_dropped_after_the_timeout() -> None:
    page = 64 * KIB
    config = {"max_page_bytes": page, "answer_page_timeout": 1.5}
    async with run_server(**config) as server:
        await stored_session(server, "stall", 2000, size=2 * KIB)  # about 4 MB
        started = time.monotonic()
        peer = await asyncio.to_thread(stalled_get, server.port, "/api/v1/sessions/stall")
        try:
            await eventually(lambda: server.unread_answers.used > 0)
            # What the server holds of the answer stays one page (and the chunk's
            # framing) in the account and in the transport's buffer, however long the
            # peer stalls: the history is not buffered.
            for _ in range(20):
                assert server.unread_answers.used <= page + 64
                buffered = sum(
                    c.transport.get_write_buffer_size() for c in server._open_connections
                )
                assert buffered <= page + 64
                await asyncio.sleep(0.05)
            # Dropped at the page timeout: nothing held, the connection gone.
            await eventually(lambda: not server._open_connections, timeout=5)
            assert time.monotonic() - started >= 1.5
            assert server.unread_answers.used == 0
            received, _ = await asyncio.to_thread(read_all, peer)
            assert not received.endswith(b"0\r\n\r\n") and len(received) < 2 * 1024 * KIB
        finally:
            peer.close()


def paused_read(port: int, path: str, paused: threading.Event, go_on: threading.Event) -> Any:
    """http.client reads the head and a little of the body, then waits for ``go_on``
    (a tiny receive buffer, so that the server waits too), then reads the rest: the
    exception it raised, or the body it read in full."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    connection.sock = sock
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        first = response.read(1000)
        paused.set()
        assert go_on.wait(30)
        try:
            return first + response.read()
        except (http.client.IncompleteRead, OSError) as exc:
            return exc
    finally:
        connection.close()


@pytest.mark.parametrize("change", ["deleted", "replaced"])
async def test_a_session_deleted_or_replaced_mid_answer_ends_it_abnormally(change: str) -> None:
    async with run_server(max_page_bytes=16 * KIB) as server:
        await stored_session(server, "moving", 2000, size=2 * KIB)  # about 4 MB
        paused, go_on = threading.Event(), threading.Event()
        reader = asyncio.create_task(
            asyncio.to_thread(paused_read, server.port, "/api/v1/sessions/moving", paused, go_on)
        )
        try:
            await eventually(paused.is_set)
            await eventually(lambda: server.unread_answers.used > 0)  # waiting for the peer
            await server.manager.delete_session("moving")
            if change == "replaced":
                session = Session.new("moving", user_id="u1")
                session.messages = [Message.user(f"new-{i}") for i in range(2000)]
                await server.storage.create_session(session)
        finally:
            go_on.set()
        outcome = await reader
        # Not a document: http.client sees the body end before its last chunk.
        assert isinstance(outcome, http.client.IncompleteRead | OSError), outcome[-200:]
        partial = outcome.partial if isinstance(outcome, http.client.IncompleteRead) else b""
        assert b"new-" not in partial  # nothing of the new session spliced in
        await eventually(lambda: not server._open_connections)
        assert server.unread_answers.used == 0


async def test_a_stop_cuts_a_streamed_answer_short_after_the_grace_period() -> None:
    # The stop waits for an answer under way as for any other, up to its grace period,
    # then closes the connection: the peer sees an incomplete body, and the stop ends.
    config = {"max_page_bytes": 64 * KIB, "answer_page_timeout": 60, "shutdown_grace": 1}
    async with run_server(**config) as server:
        await stored_session(server, "stopping", 2000, size=2 * KIB)
        peer = await asyncio.to_thread(stalled_get, server.port, "/api/v1/sessions/stopping")
        try:
            await eventually(lambda: server.unread_answers.used > 0)
            started = time.monotonic()
            await server.stop()
            # At the grace period (1 s); without it, at the answer's page timeout (60 s)
            # at best: 14 s and 45 s on either side of the bound.
            assert time.monotonic() - started < 15
            received, _ = await asyncio.to_thread(read_all, peer)
            assert received.startswith(b"HTTP/1.1 200") and not received.endswith(b"0\r\n\r\n")
        finally:
            peer.close()


def slow_read(port: int, path: str, pause: float) -> bytes:
    """http.client reads the answer 16 KiB at a time, ``pause`` seconds apart."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = b""
        while part := response.read(16 * KIB):
            body += part
            time.sleep(pause)
        return body
    finally:
        connection.close()


async def test_a_slow_but_steady_reader_gets_the_whole_answer_past_the_open_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The open timeout bounds the request and its head, not the streamed body: only
    # the page timeout does, page by page.
    monkeypatch.setattr("bamboo_session.server.http_wire.OPEN_TIMEOUT", 0.5)
    config = {"max_page_bytes": 64 * KIB, "answer_page_timeout": 2}
    async with run_server(**config) as server:
        expected = await stored_session(server, "slow", 400, size=KIB)  # about 500 KB
        started = time.monotonic()
        raw = await asyncio.to_thread(slow_read, server.port, "/api/v1/sessions/slow", 0.05)
        assert time.monotonic() - started > 1
        assert json.loads(raw)["messages"] == expected
