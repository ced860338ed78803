"""A peer that upgrades, sends its ``hello`` and resets the connection, against a real
server process (uvloop): the hello is still attached, and the peer's address (the key
of its quotas) is the one read as the connection opened, as an HTTP request's is
(tests/test_peer_reset_after_request.py). No round may log an error.

Two timings. Request and hello in one write, reset at once: the reset comes before the
connection is made, so uvloop never learns the peer's address, but it is read before
the upgrade is done, and no handler runs. Hello and reset sent while the server is
stopped (SIGSTOP), after the upgrade was answered: both wait in its socket, and the
hello reaches the handler with the reset behind it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import time
from pathlib import Path

from tests.server_process import ServerProcess, assert_no_tracebacks

ROUNDS = 30
UPGRADE = (
    b"GET /api/v1/stream/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def masked_text_frame(payload: bytes) -> bytes:
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


HELLO = masked_text_frame(json.dumps({"type": "hello", "create": True}).encode())


def reset(sock: socket.socket) -> None:
    # Linger 0: the close sends a reset, not an end of stream.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def upgraded(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(UPGRADE)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101 "), answer
    return sock


def hellos_read(server: ServerProcess) -> int:
    return sum(
        1
        for record in server.log_records()
        if record.get("event") == "connection closed" and record.get("frames_in") == 1
    )


def test_an_upgrade_reset_with_its_hello_is_no_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        assert server.proc is not None
        for _ in range(ROUNDS):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(UPGRADE + HELLO)
                reset(sock)
        for _ in range(ROUNDS):
            sock = upgraded(server.port)
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                sock.sendall(HELLO)
                reset(sock)
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
        # Each stopped round's hello was read (its connection's summary says so), so
        # its attach ran: the test reaches the path it is about.
        deadline = time.monotonic() + 10
        while hellos_read(server) < ROUNDS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hellos_read(server) >= ROUNDS
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(HEALTHZ)
            assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    assert_no_tracebacks(server.log_records())
