"""A connection the server closes and whose peer never answers the close (it reads
nothing: its close frame stays behind what fills its socket) is logged with the close
the server sent (``server_close_code``, ``server_close_reason``) beside ``close_code``
1006: the line said 1006 and nothing more, as if the peer had vanished, while the
server had cut it for its full send queue (4429, counted in ``bamboo_closes_total``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from tests.server_process import ServerProcess, assert_no_tracebacks

WAIT = 60.0  # only a guard against a hang


def _viewer_that_reads_nothing(port: int, session_id: str) -> socket.socket:
    """Upgraded and attached (its hello sent), with a small receive buffer it never
    reads from."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/v1/stream/{session_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    payload, mask = b'{"type":"hello"}', os.urandom(4)
    masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def _closed_lines(server: ServerProcess) -> list[dict[str, Any]]:
    return [r for r in server.log_records() if r.get("event") == "connection closed"]


async def test_a_peer_cut_for_its_full_send_queue_is_logged_with_the_close_sent(
    tmp_path: Path,
) -> None:
    flags = ("--send-queue-bytes", "262144", "--close-timeout", "1", "--rate-limit", "0")
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags) as server:
        async with connect(server.url("s"), max_size=None) as publisher:
            await publisher.send(json.dumps({"type": "hello", "create": True}))
            await publisher.recv()
            viewer = _viewer_that_reads_nothing(server.port, "s")
            async with asyncio.timeout(WAIT):
                while json.loads(await publisher.recv())["type"] != "presence":
                    pass  # until the viewer is attached
                number = 0
                while not _closed_lines(server):
                    frame = {"type": "event", "id": number, "event": {"type": "token"}}
                    frame["event"]["content"] = "x" * 50_000
                    await publisher.send(json.dumps(frame))
                    number += 1
                    await asyncio.sleep(0.01)
            viewer.close()
        (line,) = _closed_lines(server)[:1]
        assert line["close_code"] == 1006, line  # the peer answered nothing
        assert line["server_close_code"] == 4429, line
        assert line["server_close_reason"] == "too slow to read: send queue full", line
        assert server.stop() == 0
        publisher_line = _closed_lines(server)[-1]
        assert publisher_line["close_code"] == 1000 and "server_close_code" not in publisher_line
        assert_no_tracebacks(server.log_records())
