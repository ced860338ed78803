"""A peer that closes first, before its ``hello`` or once attached: its close frame is
echoed at once with its code, the server's end of stream follows, and the connection
ends within ``--close-timeout`` even when the peer never hangs up. Before, a handler
waiting for the ``hello`` saw the close only when the socket ended: a peer that closed
and kept its socket open held its connection until the hello timeout (10 s), an
attached one until the keepalive's next Ping (server/close_bound.py).

Real servers on loopback ports; the peers are a websockets client and raw sockets. The
hello timeout and the keepalive are left far longer than every wait here, so that only
the close's own bound can end the connections in time."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from typing import Any

from websockets.asyncio.client import connect

from tests.replay_support import frame_bounds
from tests.support import run_server, stream_url
from tests.test_wire_floods import masked_frame, upgraded_socket

FAR = 3600.0  # a hello timeout and a ping interval no wait of these tests reaches
CLOSE_TIMEOUT = 0.3
WAIT = 30.0  # for a condition; the connection would last FAR without the bound
CLOSE, TEXT, PING = 0x8, 0x1, 0x9
SUBPROTOCOLS: Any = ["bamboo.v1"]


def close_payload(code: int, reason: str) -> bytes:
    return struct.pack("!H", code) + reason.encode()


def read_until_end(sock: socket.socket) -> bytes:
    """What the server sends up to its end of stream."""
    sock.settimeout(WAIT)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    return [(opcode, data[start:end]) for opcode, start, end in frame_bounds(data)]


def dropped_by_the_server(sock: socket.socket) -> bool:
    """Whether the server let the socket go (once it did, what the peer sends is reset
    by the peer's kernel), waiting up to ``WAIT``: the peer sends a ping every few
    milliseconds, which a server still holding the socket reads and drops."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            sock.sendall(masked_frame(b"", PING))
        except (ConnectionResetError, BrokenPipeError):
            return True
        time.sleep(0.02)
    return False


def close_and_stay(port: int, session_id: str, *, hello: bool) -> tuple[list[int], bytes, bool]:
    """A raw peer that sends its close (after a ``hello`` and its ``welcome`` if
    ``hello``) and keeps its socket open: the opcodes the server sent, its close frame's
    payload, and whether the server then dropped the socket."""
    sock = upgraded_socket(port, f"/api/v1/stream/{session_id}")
    try:
        received = b""
        if hello:
            sock.sendall(masked_frame(json.dumps({"type": "hello", "create": True}).encode(), TEXT))
            sock.settimeout(WAIT)
            while b'"welcome"' not in received:
                received += sock.recv(4096)
        sock.sendall(masked_frame(close_payload(4000, "leaving"), CLOSE))
        frames = frames_of(received + read_until_end(sock))
        closes = [payload for opcode, payload in frames if opcode == CLOSE]
        dropped = dropped_by_the_server(sock)
        return [opcode for opcode, _ in frames], closes[-1] if closes else b"", dropped
    finally:
        sock.close()


async def test_a_websockets_client_closing_before_its_hello_gets_its_close_back() -> None:
    async with run_server(hello_timeout=FAR, close_timeout=CLOSE_TIMEOUT) as server:
        async with connect(stream_url(server, "s1"), subprotocols=SUBPROTOCOLS) as ws:
            await asyncio.wait_for(ws.close(4000, "leaving"), WAIT)
        assert ws.protocol.close_sent is not None and ws.protocol.close_rcvd is not None
        assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4000, "leaving")
        assert ws.protocol.close_rcvd_then_sent is False  # the echo of the client's


async def test_a_raw_peer_closing_before_its_hello_and_staying_is_let_go_in_time() -> None:
    async with run_server(
        hello_timeout=FAR, close_timeout=CLOSE_TIMEOUT, ping_interval=FAR, ping_timeout=FAR
    ) as server:
        opcodes, close, dropped = await asyncio.to_thread(
            close_and_stay, server.port, "s1", hello=False
        )
    assert opcodes == [CLOSE]  # nothing but the echo: no 4408, no error frame
    assert close == close_payload(4000, "leaving")
    assert dropped


async def test_an_attached_raw_peer_closing_and_staying_is_let_go_in_time() -> None:
    async with run_server(
        hello_timeout=FAR, close_timeout=CLOSE_TIMEOUT, ping_interval=FAR, ping_timeout=FAR
    ) as server:
        opcodes, close, dropped = await asyncio.to_thread(
            close_and_stay, server.port, "s2", hello=True
        )
    assert opcodes[-1] == CLOSE
    assert close == close_payload(4000, "leaving")
    assert dropped
