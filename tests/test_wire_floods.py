"""Raw bytes on the wire, against a real server process (its RSS and its log are read).

Floods of control frames from a peer that does not read: websockets answers pings with
pongs itself, outside every queue the server bounds, so a peer that pings without
reading must not grow the server's memory (server/http_wire.py reads a socket only
while it can be written to). And bytes sent behind a request in the same write, which
wait for its answer (server/http_wire.py's request parser)."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from pathlib import Path

from websockets.sync.client import connect

from tests.server_process import ServerProcess, assert_no_tracebacks


def masked_frame(payload: bytes, opcode: int) -> bytes:
    """A client frame (masked with a zero key), ``payload`` < 126 bytes."""
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def upgraded_socket(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # reads next to nothing
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert b" 101 " in answer.split(b"\r\n")[0], answer
    return sock


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_pings_from_a_peer_that_never_reads_do_not_grow_memory(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    port = server.start()
    assert server.proc is not None
    try:
        sock = upgraded_socket(port, "/api/v1/stream/flood")
        hello = json.dumps({"type": "hello", "create": True}).encode()
        sock.sendall(masked_frame(hello, 0x1))
        sock.settimeout(0.2)
        before = rss_kib(server.proc.pid)
        pings = masked_frame(b"p" * 125, 0x9) * 512
        stop, sent = threading.Event(), [0]

        def flood() -> None:
            while not stop.is_set():
                try:
                    sock.sendall(pings)
                    sent[0] += len(pings)
                except (TimeoutError, OSError):
                    continue

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        time.sleep(4)  # unbounded, this grew the server by ~180 MiB in 4 s
        stop.set()
        flooder.join(5)
        grown = rss_kib(server.proc.pid) - before
        # Once its socket buffer is full the server stops reading: the pings wait in TCP.
        assert grown < 32 * 1024, f"server grew {grown} KiB after {sent[0]} bytes of pings"
        sock.close()
    finally:
        server.kill()


def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in one write, then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_bytes_after_a_request_wait_for_its_answer(tmp_path: Path) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        port = server.port
        # A stray CRLF, or a second request pipelined behind the first: the first is
        # answered, the rest discarded with the connection (no pipelining here).
        for trailer in (b"\r\n", get, b"\x00" * 64):
            answer = exchange(port, get + trailer)
            assert answer.startswith(b"HTTP/1.1 200 OK"), (trailer, answer)
            assert answer.count(b"HTTP/1.1") == 1
        # A refused upgrade with bytes behind it: refused, no answer to the rest.
        upgrade = (
            b"GET /api/v1/stream/bad!id HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        refused = exchange(port, upgrade + b"\r\n")
        assert refused.startswith(b"HTTP/1.1 400"), refused
        # A hello sent in the same write as the upgrade is read once the upgrade is done.
        key = base64.b64encode(os.urandom(16)).decode()
        hello = json.dumps({"type": "hello", "create": True}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                f"GET /api/v1/stream/pipelined HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
                + masked_frame(hello, 0x1)
            )
            answer = b""
            while b'"welcome"' not in answer:
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert b" 101 " in answer.split(b"\r\n")[0]
    assert_no_tracebacks(server.log_records())


def test_a_peer_that_sends_too_much_before_its_answer_is_dropped(tmp_path: Path) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            try:
                sock.sendall(get + b"\r\n" * 100_000)  # 200 KB behind the request
                answer = sock.recv(100)
            except ConnectionResetError:
                answer = b""
        assert not answer.startswith(b"HTTP/1.1 200"), answer
        assert exchange(server.port, get).startswith(b"HTTP/1.1 200 OK")
    assert_no_tracebacks(server.log_records())


def test_answers_to_peers_gone_before_them_are_not_counted_as_unread(tmp_path: Path) -> None:
    # A 2 MiB budget: answers not yet read may hold 512 KiB; the page is ~600 KB.
    with ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--memory-budget", str(2 << 20)
    ) as server:
        with connect(f"ws://127.0.0.1:{server.port}/api/v1/stream/page") as ws:
            ws.send(json.dumps({"type": "hello", "create": True}))
            ws.recv()
            for i in range(3):
                message = {"role": "user", "content": f"{i}" + "p" * 200_000}
                ws.send(json.dumps({"type": "message", "id": i, "message": message}))
                ws.recv()
        page = b"GET /api/v1/sessions/page?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        for _ in range(5):  # ask, then leave before the answer: its charge must go
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(page)
                sock.shutdown(socket.SHUT_WR)
        time.sleep(0.5)
        assert exchange(server.port, page).startswith(b"HTTP/1.1 200 OK")
    assert_no_tracebacks(server.log_records())


def test_an_answer_read_to_its_end_is_not_kept_while_its_peer_stays(tmp_path: Path) -> None:
    # After an answer, the server waits up to the close timeout for its peer to hang
    # up. The answer's bytes are counted until sent; its body must not outlive them.
    peers, page_bytes = 120, 900_000
    # 108 MB of pages from one address: past the default read allowance's 64 MiB at
    # once, which is not what this test measures. A burst of 256 MiB of pages holds them.
    allowance = ("--rate-limit-bytes-burst", str(16 * 1024 * 1024))
    with ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--close-timeout", "20", *allowance
    ) as server:
        assert server.proc is not None
        with connect(f"ws://127.0.0.1:{server.port}/api/v1/stream/page") as ws:
            ws.send(json.dumps({"type": "hello", "create": True}))
            ws.recv()
            for i in range(3):
                message = {"role": "user", "content": f"{i}" + "p" * (page_bytes // 3)}
                ws.send(json.dumps({"type": "message", "id": i, "message": message}))
                ws.recv()
        page = b"GET /api/v1/sessions/page?limit=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        before = rss_kib(server.proc.pid)
        staying: list[socket.socket] = []
        try:
            for _ in range(peers):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                staying.append(sock)
                sock.sendall(page)
                answer = b""
                while chunk := sock.recv(1 << 20):  # to the server's end of stream
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 200 OK") and len(answer) > page_bytes
            grown = rss_kib(server.proc.pid) - before
        finally:
            for sock in staying:
                sock.close()
        # Kept, the answers would be about 100 MiB; the allocator's slack stays far below.
        assert grown < peers * page_bytes // 1024 // 4, f"grew {grown} KiB"
    assert_no_tracebacks(server.log_records())
