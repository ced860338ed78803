"""A peer that sends its request and resets the connection at once, against a real
server process: the request may be handled after the transport is gone, and the
peer's address (the key of its allowances) must still be known then.

Under uvloop, a closed transport's ``get_extra_info("peername")`` raises
AttributeError (its socket is gone): such a request was logged as "process_request
failed", at error level with a traceback (29 of 600 mixed connections; here most of
60), so a peer could fill the log at will.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

from tests.server_process import ServerProcess, assert_no_tracebacks

ROUNDS = 60
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def send_and_reset(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        # Linger 0: the close sends a reset, not an end of stream.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(data)


def test_a_request_reset_at_once_is_no_error(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        for _ in range(ROUNDS):
            send_and_reset(server.port, HEALTHZ)
        # One request more, answered: the server read the reset ones before it, and
        # handled each as it read it.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(HEALTHZ)
            assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    assert_no_tracebacks(server.log_records())
