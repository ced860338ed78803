"""The cap on connections to one session (--max-session-connections), against a real
server process.

Each attach and each leave sends ``presence`` to every other connection of the
session, so filling one session with N connections costs the server N²/2 frames: 1,000
connections without a ``user_id`` (counted by no per-user limit) took 8.4 s of the
server's CPU on its one event loop, every other session waiting meanwhile, and the
cost grows fourfold with each doubling.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server_process import ServerProcess, assert_no_tracebacks

DEFAULT_CAP = 256


async def attach(port: int, session_id: str, stack: AsyncExitStack) -> ClientConnection:
    ws = await stack.enter_async_context(
        # Reads every presence the crowd brings, and sends no pings the server's
        # busy moments could leave unanswered: the test measures the server alone.
        # Asyncio clients, not the sync ones: a thread per connection, woken for each
        # of the crowd's 33,000 presence frames, was most of this test's CPU.
        connect(
            f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}",
            open_timeout=5,
            max_queue=None,
            ping_interval=None,
            close_timeout=1,
        )
    )
    await ws.send(json.dumps({"type": "hello", "create": True}))
    return ws


async def welcomed(ws: ClientConnection) -> None:
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] != "welcome":
        assert frame["type"] == "presence", frame


async def test_one_connection_over_the_default_cap_of_a_session_is_closed_4429(
    tmp_path: Path,
) -> None:
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log")
    with server:
        async with AsyncExitStack() as stack:
            port = server.port
            crowd = [await attach(port, "crowded", stack) for _ in range(DEFAULT_CAP)]
            for ws in crowd:
                await welcomed(ws)
            extra = await attach(port, "crowded", stack)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(extra.recv(), 10)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4429
            assert closed.value.rcvd.reason == "too many connections for this session"
            # Other sessions are not crowded; and once one of the crowd leaves, one more
            # fits.
            await welcomed(await attach(port, "elsewhere", stack))
            await crowd[0].close()
            await welcomed(await attach(port, "crowded", stack))
    assert_no_tracebacks(server.log_records())


async def test_the_cap_is_a_setting(tmp_path: Path) -> None:
    capped = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--max-session-connections", "2"
    )
    with capped as server:
        async with AsyncExitStack() as stack:
            for ws in [await attach(server.port, "pair", stack) for _ in range(2)]:
                await welcomed(ws)
            third = await attach(server.port, "pair", stack)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(third.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
    assert_no_tracebacks(server.log_records())
