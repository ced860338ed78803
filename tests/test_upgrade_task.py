"""server/upgrade_task.py, the connection's task in place of websockets' own: a request
that comes in pieces is answered once whole, the answer carries the server's ``Server``
header (answer_heads.py), and every connection's task ends and leaves the server's
sets, whether its peer hung up before its request, was refused, or upgraded, attached
and left."""

from __future__ import annotations

import asyncio
import base64
import os

from bamboo_session.server.answer_heads import SERVER_NAME
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.support import attach, run_server


def _upgrade_head(port: int, path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bamboo.v1\r\n\r\n"
    ).encode()


async def _answer_head(reader: asyncio.StreamReader) -> list[str]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head.decode().split("\r\n")


def _all_ended(server: BambooServer) -> bool:
    ws_server = server._server
    assert ws_server is not None
    return not ws_server.handler_tasks and not ws_server.all_connections


async def test_a_request_sent_in_pieces_is_answered_once_whole() -> None:
    async with run_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        head = _upgrade_head(server.port, "/api/v1/stream/pieces")
        writer.write(head[:20])
        await writer.drain()
        # Nothing is answered for a part: the connection waits for the rest.
        await eventually(lambda: len(server._open_connections) == 1)
        writer.write(head[20:])
        lines = await _answer_head(reader)
        assert lines[0] == "HTTP/1.1 101 Switching Protocols"
        assert f"Server: {SERVER_NAME}" in lines
        writer.transport.abort()
        await eventually(lambda: _all_ended(server) and not server._open_connections)


async def test_a_refused_request_s_answer_names_the_server_too() -> None:
    async with run_server() as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(_upgrade_head(server.port, "/api/v1/elsewhere"))
        lines = await _answer_head(reader)
        assert lines[0].startswith("HTTP/1.1 404 ")
        assert f"Server: {SERVER_NAME}" in lines
        writer.close()
        await eventually(lambda: _all_ended(server) and not server._open_connections)


async def test_every_connection_s_task_ends_however_its_peer_left() -> None:
    async with run_server() as server:
        # Hung up before sending anything.
        _, silent = await asyncio.open_connection("127.0.0.1", server.port)
        await eventually(lambda: len(server._open_connections) == 1)
        silent.close()
        # Attached to a session, then gone.
        async with attach(server, "left", create=True) as (_peer, welcome):
            assert welcome["type"] == "welcome"
            ws_server = server._server
            assert ws_server is not None
            assert len(ws_server.all_connections) == 1
        await eventually(lambda: _all_ended(server) and not server._open_connections)
