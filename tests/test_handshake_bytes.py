"""Bytes of HTTP requests not answered yet: one request's head is at most 16 KiB, and
what every connection has sent before its answer is charged to one share of the memory
budget (server/http_requests.py).

websockets alone allows 128 header lines of 8 KiB each, about 1 MiB a request, held
while the request is read and answered (and an upgrade's until its ``hello``): peers
that sent that much and nothing more grew the server by about 1 MiB each, before any
auth, and the allocator kept the memory after they were gone."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.server.http_requests import MAX_HEAD_BYTES
from bamboo_session.server.http_wire import EARLY_BYTES
from tests.server_process import ServerProcess
from tests.support import run_server, stream_url

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


def upgrade_head(lines: int, value: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        "GET /api/v1/stream/headers HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    )
    return head + "".join(f"X-Filler-{i}: {value}\r\n" for i in range(lines))


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
        request = (upgrade_head(HEADER_LINES, HEADER_VALUE) + ("\r\n" if finished else "")).encode()
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(sock)
            try:
                sock.sendall(request)
            except OSError:
                continue  # refused or dropped: what a bounded server may well do
        # The server reads what the kernel holds within a few seconds; unanswered, the
        # requests would be held for 10 s (the open timeout; upgraded, the hello's).
        grown = 0
        deadline = time.monotonic() + 3
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
    assert not [r for r in server.log_records() if r.get("level") in ("error", "critical")]


async def answer_of(port: int, request: bytes) -> bytes:
    """Sends ``request`` as it is; all the server answers, to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_head_of_small_lines_over_16_kib_in_all_is_431() -> None:
    """Each line and their count within websockets' limits; the whole over 16 KiB."""
    over = (upgrade_head(MAX_HEAD_BYTES // 200, "v" * 200) + "\r\n").encode()
    under = (upgrade_head(MAX_HEAD_BYTES // 200 - 10, "v" * 200) + "\r\n").encode()
    assert len(under) < MAX_HEAD_BYTES < len(over)
    async with run_server() as server:
        answer = await answer_of(server.port, over)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), head
        assert b'"code":"bad_request"' in body and b"16384 bytes" in body, body
        # Just under the bound, the same upgrade is served.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(under)
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert status.startswith(b"HTTP/1.1 101 "), status


async def test_stalled_heads_past_the_share_are_dropped_oldest_first_and_clients_served() -> None:
    """A sixteenth of a 1 MiB budget is 64 KiB: four unfinished heads of 15 KiB fill it.
    A fifth takes the room of the oldest (dropped without an answer), and a client that
    comes meanwhile is served at once, its room made the same way: stalled heads cannot
    keep clients out."""
    head = upgrade_head(15, "h" * 1000).encode()
    assert 15_000 < len(head) < MAX_HEAD_BYTES
    async with run_server(memory_budget=1 << 20) as server:
        share = server.unanswered_requests
        assert share.limit == 64 * 1024
        holders = []
        for count in range(1, 6):
            holders.append(await asyncio.open_connection("127.0.0.1", server.port))
            holders[-1][1].write(head)
            await holders[-1][1].drain()
            await _until(lambda count=count: share.used >= min(count, 4) * len(head))
        # The first, the oldest, made room for the fifth: dropped, never answered.
        assert await asyncio.wait_for(holders[0][0].read(), 5) == b""
        await served(server)
        assert share.used <= 4 * len(head)
        for _, writer in holders:
            writer.close()
        await _until(lambda: share.used == 0)


async def _until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# A request of each way it may end: answered, refused by the parser, not HTTP at all.
ANSWERED_REQUESTS = {
    "answered": lambda: b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "refused-431": lambda: (upgrade_head(MAX_HEAD_BYTES // 200, "v" * 200) + "\r\n").encode(),
    "not-http": lambda: b"\x16\x03\x01\x02\x00" + b"\x01" * 200 + b"\r\n",
}


async def served(server: Any) -> None:
    """A client upgrades and attaches: the server takes new connections."""
    async with connect(stream_url(server), open_timeout=5) as ws:
        await ws.send('{"type": "hello", "create": true}')
        assert '"welcome"' in str(await asyncio.wait_for(ws.recv(), 5))


@pytest.mark.parametrize("kind", list(ANSWERED_REQUESTS))
async def test_bytes_sent_after_the_answer_are_not_charged_to_the_share(kind: str) -> None:
    """Once a request is answered (or refused), what its peer sends is discarded unread,
    not held: it costs no memory and must not be charged. Charged, one peer that kept
    sending after its answer, without hanging up, held the whole share (64 KiB of a
    1 MiB budget here, 16 MiB by default) while the server waited for its end of
    stream (5 s, the close timeout; 10 s, the open timeout, after a refusal), and every
    other client's request was dropped meanwhile."""
    request = ANSWERED_REQUESTS[kind]()
    async with run_server(memory_budget=1 << 20) as server:
        limit = server.unanswered_requests.limit
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)  # the answer (or none), then EOF
            # Just under what the share has left: discarded bytes, nothing held.
            writer.write(b"x" * (limit - len(request) - 16))
            await writer.drain()
            await asyncio.sleep(0.5)  # read by the server (loopback)
            await served(server)
            assert server.unanswered_requests.used <= len(request)
        finally:
            writer.close()
        await _until(lambda: server.unanswered_requests.used == 0)


@pytest.mark.parametrize("kind", list(ANSWERED_REQUESTS))
async def test_a_request_s_bytes_are_given_back_once_it_is_answered(kind: str) -> None:
    """Once answered or refused, a request's bytes are dropped (websockets discards what
    it held, and the connection keeps of its request only the path): their charge goes
    with them, not when the peer hangs up. Kept, a peer that sent a request and up to
    64 KiB behind it, and then neither read nor hung up, held its charge for the close
    timeout (5 s) after its answer, or the open timeout (10 s) after a refusal: under a
    16 MiB share, 256 such connections (or 128 refused ones, whose reads of up to
    128 KiB are charged whole) dropped every other request, and again when renewed."""
    request = ANSWERED_REQUESTS[kind]()
    async with run_server(memory_budget=1 << 20) as server:
        limit = server.unanswered_requests.limit
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            # Behind the request, early bytes up to what the share has left but 100.
            writer.write(request + b"x" * min(EARLY_BYTES, limit - len(request) - 100))
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)  # the answer (or none), then EOF
            # Given back at the answer, not when the connection is dropped (the close
            # timeout after it, at the earliest): half that tells the two apart on a
            # loaded machine, where 1 s left little room.
            given_back = server.config.close_timeout / 2
            await _until(lambda: server.unanswered_requests.used == 0, timeout=given_back)
            await served(server)
        finally:
            writer.close()
