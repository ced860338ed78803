"""What the tests of resume replays on a real server share (tests/test_replay_server_*.py
and many others): publishing events, a raw-socket resumer that reads nothing, the
server's frames and close in what a peer read, the kernel's send buffer, a figure of
/metrics, and ``SlotsTaken``, which holds every page-read slot."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from bamboo_session.server.pages import PageReads
from tests.support import Peer, token
from tests.test_wire_floods import masked_frame

KIB = 1024
MIB = 1024 * KIB


async def publish(agent: Peer, count: int, size: int = 10) -> None:
    """``count`` events, pipelined, each acknowledged before this returns."""
    for i in range(count):
        await agent.send({"type": "event", "id": i, "event": token(f"{i}:" + "e" * size)})
    for _ in range(count):
        await agent.recv_type("ack", timeout=30)


def stalled_resumer(
    port: int, session_id: str, last_seq: int, address: str = "127.0.0.1"
) -> socket.socket:
    """A peer that resumes and then reads nothing, connecting from ``address``: its
    receive buffer is made tiny before it connects, so that the window it offers stays
    tiny too."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", port))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        f"GET /api/v1/stream/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert b" 101 " in answer.split(b"\r\n")[0], answer
    sock.sendall(masked_frame(json.dumps({"type": "hello", "last_seq": last_seq}).encode(), 1))
    return sock


def frame_bounds(data: bytes | bytearray, at: int = 0) -> Iterator[tuple[int, int, int]]:
    """(opcode, where its payload starts, where it ends) of each whole (unmasked) server
    frame in ``data`` from offset ``at``, which must be where a frame starts."""
    while at + 2 <= len(data):
        length, head = data[at + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if at + head + length > len(data):
            return
        yield data[at] & 0x0F, at + head, at + head + length
        at += head + length


def server_frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, payload) of each whole (unmasked) server frame at the start of ``data``."""
    for opcode, start, end in frame_bounds(data):
        yield opcode, data[start:end]


def events_and_close(data: bytes) -> tuple[list[int], int | None]:
    """The seqs of the event frames in what a peer read, and the close code, if any."""
    seqs, code = [], None
    for opcode, payload in server_frames(data):
        if opcode == 0x1 and json.loads(payload)["type"] == "event":
            seqs.append(json.loads(payload)["seq"])
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big")
    return seqs, code


def bytes_until_close(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent, up to its close frame or for ``timeout`` at most."""
    sock.settimeout(0.2)
    data = b""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        with contextlib.suppress(TimeoutError):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        if any(opcode == 0x8 for opcode, _ in server_frames(data)):
            break
    return data


def read_until_close(sock: socket.socket, timeout: float) -> tuple[list[int], int | None]:
    """Reads what the server sent: the seqs of its event frames, and its close code
    (None if no close frame came within ``timeout``)."""
    return events_and_close(bytes_until_close(sock, timeout))


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to (the third field of tcp_wmem)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * MIB


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def gauge(server: BambooServer, name: str) -> float:
    """A metric's value on ``server`` now."""
    return metric(server.metrics.render().decode(), name)


class SlotsTaken:
    """Every page-read slot held (as if eight pages were being read elsewhere) until
    ``give_back`` or the end of the ``async with``."""

    def __init__(self, reads: PageReads) -> None:
        self.slots = reads.slots
        self.held = 0

    async def __aenter__(self) -> SlotsTaken:
        for _ in range(DEFAULT_READ_SLOTS):
            await self.slots.acquire()
            self.held += 1
        return self

    def give_back(self, count: int | None = None) -> None:
        for _ in range(self.held if count is None else count):
            self.slots.release()
            self.held -= 1

    async def __aexit__(self, *exc_info: object) -> None:
        self.give_back()
