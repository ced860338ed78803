"""HTTP answers nobody reads are bounded in bytes: counted while unread (even when the
kernel could take them), refused with 503 past their share of the memory budget while
small answers stay served, and not counted once read in full on a connection that
stays open.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from tests.memory_support import KIB, MIB
from tests.support import attach, run_server
from tests.test_server_lifecycle import eventually


def unread_get(port: int, path: str) -> socket.socket:
    """A peer that asks for ``path`` and does not read the answer (a tiny buffer)."""
    peer = non_reader(port)
    ask(peer, path)
    return peer


def non_reader(port: int) -> socket.socket:
    """A peer connected to the server that will not read (a tiny receive buffer)."""
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(("127.0.0.1", port))
    return peer


def ask(peer: socket.socket, path: str) -> None:
    """``peer`` asks for ``path``."""
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())


def status_of(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """The status and Retry-After of a request whose answer is read in full."""
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = b""
        while chunk := peer.recv(1 << 20):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    retry = next((h.split(":")[1].strip() for h in lines if h.startswith("Retry-After")), "")
    return int(head.split()[1]), retry


def kernel_send_buffer() -> int:
    """The most of an answer the kernel takes into a socket's send buffer (Linux grows
    it up to tcp_wmem's maximum); the rest waits in the server's own buffer."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MIB


async def history_page_of(server: Any, messages: int, size: int) -> str:
    """The path of a page of a new session's history: ``messages`` of ``size`` bytes."""
    async with attach(server, role="agent") as (agent, welcome):
        for i in range(messages):
            message = {"role": "user", "content": f"{i}" + "m" * size}
            await agent.request({"type": "message", "id": i, "message": message}, "ack")
    return f"/api/v1/sessions/{welcome['session']['id']}?limit=1000"


MISSING = "/api/v1/sessions/no-such-session"
# Every peer of these tests is 127.0.0.1, one peer to the server: its share of the
# unread answers is made the whole account, which is what is tested here (a peer's
# share: tests/test_answer_shares.py).
WHOLE_ACCOUNT = 1.0


async def test_answers_nobody_reads_are_bounded_in_bytes() -> None:
    # A 4 MiB budget: HTTP answers not yet taken may hold a quarter of it, 1 MiB. The
    # page is 2 MiB more than the kernel takes off the server's hands.
    page_bytes = kernel_send_buffer() + 2 * MIB
    part = 512 * KIB
    config = {
        "memory_budget": 4 * MIB,
        "max_page_bytes": page_bytes + MIB,
        "answer_peer_share": WHOLE_ACCOUNT,
    }
    async with run_server(**config) as server:
        page = await history_page_of(server, page_bytes // part + 1, part)
        loop = asyncio.get_running_loop()
        stalled = await loop.run_in_executor(None, unread_get, server.port, page)
        try:
            await eventually(lambda: server.unread_answers.used > MIB)
            assert await loop.run_in_executor(None, status_of, server.port, page) == (503, "1")
            # Refused before the store is read: a missing session is not even looked up.
            missing = await loop.run_in_executor(None, status_of, server.port, MISSING)
            assert missing == (503, "1")
            # Small answers stay served whatever is held.
            health = await loop.run_in_executor(None, status_of, server.port, "/healthz")
            assert health[0] == 200
            # A HEAD of the page is told what its GET is told, before the store is
            # read (it holds no body, but says what the GET would get); a path that
            # only looks like one is served.
            head = await loop.run_in_executor(None, status_of, server.port, page, "HEAD")
            assert head == (503, "1")
            other = await loop.run_in_executor(None, status_of, server.port, "/api/v1/sessionsx")
            assert other == (404, "")
        finally:
            stalled.close()
        await eventually(lambda: server.unread_answers.used == 0)
        assert (await loop.run_in_executor(None, status_of, server.port, page))[0] == 200
        assert (await loop.run_in_executor(None, status_of, server.port, MISSING))[0] == 404


async def test_answers_nobody_reads_are_counted_though_the_kernel_could_take_them() -> None:
    # Answers not yet read may hold 1 MiB (a quarter of the budget); the page is about
    # 1 MB, less than the kernel's send buffer can grow to (tcp_wmem, 4 MiB here): a
    # kernel left to itself took it whole, so that it was not counted, and every peer
    # that never reads could hold another.
    config = {
        "memory_budget": 4 * MIB,
        "max_page_bytes": 2 * MIB,
        "answer_peer_share": WHOLE_ACCOUNT,
    }
    async with run_server(**config) as server:
        page = await history_page_of(server, 8, 120_000)
        loop = asyncio.get_running_loop()
        stalled = await loop.run_in_executor(None, unread_get, server.port, page)
        try:
            # Most of the page is counted once the answer is written (the request read and
            # answered in turns of the loop that a busy machine spreads out: waited for).
            await eventually(lambda: server.unread_answers.used > 512 * KIB, 20.0)
            assert await loop.run_in_executor(None, status_of, server.port, page) == (503, "1")
        finally:
            stalled.close()
        await eventually(lambda: server.unread_answers.used == 0)


def read_and_stay(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A peer that reads its whole answer (to the server's end of it) and keeps its
    connection open, as a keep-alive pool does."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    answer = b""
    while chunk := peer.recv(65536):
        answer += chunk
    return peer, answer


async def test_an_answer_read_in_full_is_not_counted_while_its_connection_stays_open() -> None:
    # 512 KiB for answers not yet read, the page ~360 KB: two do not fit at once. The
    # server waits close_timeout for a peer to close after its answer: long here.
    async with run_server(memory_budget=2 * MIB, close_timeout=60) as server:
        page = await history_page_of(server, 3, 120_000)
        loop = asyncio.get_running_loop()
        staying, answer = await loop.run_in_executor(None, read_and_stay, server.port, page)
        try:
            assert answer.startswith(b"HTTP/1.1 200") and len(answer) > 360_000
            # Its bytes have left: the next big answer fits, and nothing is counted.
            assert await loop.run_in_executor(None, status_of, server.port, page) == (200, "")
            await eventually(lambda: server.unread_answers.used == 0)
        finally:
            staying.close()
