"""The cap on connections open at once (--max-connections), against a real server
process: idle sockets from a peer that never sends a request, or sends a hello and
nothing more, must not take the descriptors the store needs, nor memory without end.

Without the cap, 400 idle sockets against a server whose open-file limit is 256 took
every descriptor it had: an attached agent's next append failed (``internal``, EMFILE
on its session's log) for as long as the sockets stayed open.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from websockets.sync.client import ClientConnection, connect

from tests.server_process import ServerProcess, assert_no_tracebacks

# The server's descriptors: few enough that a test's sockets can take them all.
FD_LIMIT = 256


def low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def wait_for_fds(pid: int, wanted: Callable[[int], bool], timeout: float = 10.0) -> None:
    """Until the server's open descriptors satisfy ``wanted`` (its accepts and closes
    are its own to schedule: a loaded machine takes longer than any fixed pause)."""
    deadline = time.monotonic() + timeout
    while not wanted(open_fds(pid)):
        assert time.monotonic() < deadline, f"{open_fds(pid)} descriptors open"
        time.sleep(0.01)


@contextmanager
def idle_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send nothing, closed on exit."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            # A full accept backlog drops SYNs, which the kernel retries after 1, 2, 4 s.
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=30))
            sockets.append(sock)
        yield sockets


def wait_until_closed(sockets: list[socket.socket], count: int, timeout: float = 30.0) -> None:
    """Until the server has closed at least ``count`` of ``sockets`` (an end of stream
    or a reset reads on each)."""
    deadline = time.monotonic() + timeout
    closed: set[socket.socket] = set()
    while len(closed) < count:
        assert time.monotonic() < deadline, f"{len(closed)} of {len(sockets)} closed"
        ready, _, _ = select.select([s for s in sockets if s not in closed], [], [], 0.1)
        for sock in ready:
            try:
                if sock.recv(1) == b"":
                    closed.add(sock)
            except ConnectionResetError:
                closed.add(sock)


def publish(ws: ClientConnection, request_id: int) -> dict[str, object]:
    event = {"type": "event", "id": request_id, "event": {"type": "token", "content": "x"}}
    ws.send(json.dumps(event))
    reply: dict[str, object] = json.loads(ws.recv(timeout=5))
    return reply


def test_idle_sockets_leave_the_store_its_descriptors(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", preexec_fn=low_fd_limit)
    port = server.start()
    assert server.proc is not None
    try:
        with connect(f"ws://127.0.0.1:{port}/api/v1/stream/agent", open_timeout=5) as agent:
            agent.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(agent.recv(timeout=5))["type"] == "welcome"
            with idle_sockets(port, FD_LIMIT + 144) as idle:
                # Those over the cap (half the limit, the agent's connection among them)
                # are closed as soon as accepted.
                wait_until_closed(idle, len(idle) - FD_LIMIT // 2)
                # The session's log is opened by its first append, now.
                assert publish(agent, 1) == {"type": "ack", "seq": 1, "id": 1}
                # Half the limit for connections; the rest is the store's and the
                # process's own (a few dozen here).
                assert open_fds(server.proc.pid) <= FD_LIMIT // 2 + 48
            assert publish(agent, 2) == {"type": "ack", "seq": 2, "id": 2}
        # Room again for new connections once the idle ones are gone.
        with connect(f"ws://127.0.0.1:{port}/api/v1/stream/later", open_timeout=5) as later:
            later.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(later.recv(timeout=5))["type"] == "welcome"
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())


def test_one_connection_over_the_cap_is_closed_unanswered(tmp_path: Path) -> None:
    capped = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--max-connections", "4")
    with capped as server:
        port = server.port
        assert server.proc is not None
        pid = server.proc.pid
        with connect(f"ws://127.0.0.1:{port}/api/v1/stream/held", open_timeout=5) as held:
            held.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(held.recv(timeout=5))["type"] == "welcome"
            before = open_fds(pid)
            with idle_sockets(port, 3):
                wait_for_fds(pid, lambda fds: fds >= before + 3)  # all three accepted
                with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
                    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    try:
                        answer = extra.recv(1000)
                    except ConnectionResetError:
                        answer = b""
                    assert answer == b""
                # The connections within the cap go on as before.
                assert publish(held, 1) == {"type": "ack", "seq": 1, "id": 1}
                with_idle = open_fds(pid)  # the session's log among them, since that append
            wait_for_fds(pid, lambda fds: fds <= with_idle - 3)  # the three seen gone
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                metrics = b""
                while chunk := sock.recv(65536):
                    metrics += chunk
            assert b"\nbamboo_connections_over_limit_total 1.0\n" in metrics
    assert_no_tracebacks(server.log_records())
