"""The cap on connections to one session (--max-session-connections), against a real
server process.

Each attach and each leave sends ``presence`` to every other connection of the
session, so filling one session with N connections costs the server N²/2 frames: 1,000
connections without a ``user_id`` (counted by no per-user limit) took 8.4 s of the
server's CPU on its one event loop, every other session waiting meanwhile, and the
cost grows fourfold with each doubling.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.server_process import ServerProcess, assert_no_tracebacks

DEFAULT_CAP = 256


def attach(port: int, session_id: str, stack: ExitStack) -> ClientConnection:
    ws = stack.enter_context(
        # Reads every presence the crowd brings, and sends no pings the server's
        # busy moments could leave unanswered: the test measures the server alone.
        connect(
            f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}",
            open_timeout=5,
            max_queue=None,
            ping_interval=None,
            close_timeout=1,
        )
    )
    ws.send(json.dumps({"type": "hello", "create": True}))
    return ws


def welcomed(ws: ClientConnection) -> None:
    while (frame := json.loads(ws.recv(timeout=10)))["type"] != "welcome":
        assert frame["type"] == "presence", frame


def test_one_connection_over_the_default_cap_of_a_session_is_closed_4429(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server, ExitStack() as stack:
        port = server.port
        crowd = [attach(port, "crowded", stack) for _ in range(DEFAULT_CAP)]
        for ws in crowd:
            welcomed(ws)
        extra = attach(port, "crowded", stack)
        with pytest.raises(ConnectionClosed) as closed:
            extra.recv(timeout=10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4429
        assert closed.value.rcvd.reason == "too many connections for this session"
        # Other sessions are not crowded; and once one of the crowd leaves, one more fits.
        welcomed(attach(port, "elsewhere", stack))
        crowd[0].close()
        welcomed(attach(port, "crowded", stack))
    assert_no_tracebacks(server.log_records())


def test_the_cap_is_a_setting(tmp_path: Path) -> None:
    capped = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--max-session-connections", "2"
    )
    with capped as server, ExitStack() as stack:
        for ws in [attach(server.port, "pair", stack) for _ in range(2)]:
            welcomed(ws)
        third = attach(server.port, "pair", stack)
        with pytest.raises(ConnectionClosed) as closed:
            third.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    assert_no_tracebacks(server.log_records())
