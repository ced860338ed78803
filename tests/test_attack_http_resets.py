"""Peers that ask for a page over HTTP and reset the connection at once, against a real
``serve`` process: the server must keep nothing of what it read for them. It now reads
nothing for a peer whose reset it knows of when its turn comes, and gives up a read
under way when the reset comes (tests/test_http_reset_storm.py); before that, it read
each page for nobody, and the answer's end kept nothing of it. An answer made
after its peer had gone stayed on its connection, which outlives its loss until the
collector finds its cycles, and a server collects those rarely
(server/process_setup.py): 500 such requests for a page of 700 KB grew a server by some
300 MB, 1,500 by 800 MB, none of it counted by ``--memory-budget`` (h419). Both kinds
of answer: a page (``?limit=``), and a whole history, whose first page is read before
its head is sent."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.memory_support import MIB
from tests.server_process import ServerProcess, assert_no_tracebacks

MESSAGE_BYTES = 3 * MIB  # one message: each page of it is 3 MiB
RESETS = 100  # requests, each reset as soon as it is sent: 300 MiB of pages in all
# What the server may have grown by once they are all handled: its read slots' pages
# in flight and the allocator's slack, far below what the pages held would be.
GROWTH_ALLOWED = 100 * MIB


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


async def settled(pid: int) -> None:
    """Returns once the server has used no CPU for a second: every request handled
    (a guard of a minute against a server that never settles)."""
    deadline = time.monotonic() + 60
    ticks = cpu_ticks(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = cpu_ticks(pid)
        if now == ticks:
            return
        ticks = now
    raise AssertionError("the server kept working for a minute")


def ask_and_reset(port: int, target: str) -> None:
    """Sends a GET of ``target``, then closes with a reset (SO_LINGER 0) at once."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    peer.close()


def read_whole(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = b""
        while chunk := peer.recv(1 << 20):
            answer += chunk
    return answer


@pytest.mark.parametrize("target", ["/api/v1/sessions/big?limit=1", "/api/v1/sessions/big"])
async def test_pages_read_for_peers_that_reset_are_not_kept(tmp_path: Path, target: str) -> None:
    server = ServerProcess(
        tmp_path / "data",
        tmp_path / "server.log",
        "--max-frame-bytes",
        str(MESSAGE_BYTES + MIB),
        "--max-page-bytes",
        str(MESSAGE_BYTES + MIB),
    )
    port = await server.start_in_loop()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        url = server.url("big")
        async with connect(url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            message = {"role": "user", "content": "m" * MESSAGE_BYTES}
            await ws.send(json.dumps({"type": "message", "id": 1, "message": message}))
            assert json.loads(await ws.recv())["type"] == "ack"
        # One read taken in full first: the allocator has met pages of this size.
        answer = await asyncio.to_thread(read_whole, port, target)
        assert answer.startswith(b"HTTP/1.1 200 ") and len(answer) > MESSAGE_BYTES
        await settled(pid)
        before = resident_bytes(pid)
        for _ in range(RESETS):
            await asyncio.to_thread(ask_and_reset, port, target)
        await settled(pid)
        grown = resident_bytes(pid) - before
        assert grown < GROWTH_ALLOWED, f"{grown / MIB:.0f} MiB more after {RESETS} resets"
        # Still serving, the same page.
        again = await asyncio.to_thread(read_whole, port, target)
        assert again.startswith(b"HTTP/1.1 200 ") and len(again) > MESSAGE_BYTES
    finally:
        assert server.stop() == 0
    assert_no_tracebacks(server.log_records())
