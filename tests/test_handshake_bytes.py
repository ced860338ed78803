"""Bytes of HTTP handshakes, against a real server process (its RSS is read).

A request may carry up to 128 header lines of 8 KiB each (websockets' limits): about
1 MiB. The server keeps them while the request is read (until websockets' open
timeout, 10 s), and, for an upgrade, until the ``hello`` comes (10 s more). Nothing
bounds those bytes over all the connections that hold them: not ``--memory-budget``,
not a count of half-open handshakes. So a peer that opens many connections, each with
about 1 MiB of headers and nothing else, grows the server by about 1 MiB per connection,
before any auth, and the allocator keeps the memory after the peers are gone."""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path

import pytest

from tests.server_process import ServerProcess

HEADER_LINES = 120
HEADER_VALUE = "a" * 8000  # under websockets' 8 KiB line limit
CONNECTIONS = 150  # about 140 MiB of headers in all
BUDGET = 32 << 20
# The whole process may grow by twice its memory budget for such peers, no more.
ALLOWED_GROWTH_KIB = 2 * BUDGET // 1024


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def big_upgrade(finished: bool) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        "GET /api/v1/stream/headers HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    filler = "".join(f"X-Filler-{i}: {HEADER_VALUE}\r\n" for i in range(HEADER_LINES))
    return (head + filler + ("\r\n" if finished else "")).encode()


@pytest.mark.xfail(
    strict=True,
    reason="handshake headers (up to ~1 MiB per connection) are held for up to 20 s, "
    "counted against no byte bound: many half-open upgrades grow the server without end",
)
@pytest.mark.parametrize("finished", [False, True], ids=["headers-unfinished", "no-hello"])
def test_many_handshakes_with_big_headers_do_not_grow_memory_past_the_budget(
    tmp_path: Path, finished: bool
) -> None:
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--memory-budget", str(BUDGET)
    )
    port = server.start()
    assert server.proc is not None
    socks: list[socket.socket] = []
    try:
        before = rss_kib(server.proc.pid)
        request = big_upgrade(finished)
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            try:
                sock.sendall(request)
            except OSError:
                continue  # refused or dropped: what a bounded server may well do
        # The server reads what the kernel holds within a few seconds; the requests
        # are held for 10 s (unfinished: the open timeout; upgraded: the hello's).
        grown = 0
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            grown = max(grown, rss_kib(server.proc.pid) - before)
            time.sleep(0.2)
        assert grown < ALLOWED_GROWTH_KIB, (
            f"{CONNECTIONS} handshakes of {len(request)} bytes grew the server by "
            f"{grown} KiB (budget {BUDGET >> 10} KiB)"
        )
    finally:
        for sock in socks:
            sock.close()
        server.kill()
