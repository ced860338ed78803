"""The ``serve`` command as an operator runs it: a real process, signals, flags, env."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bamboo_session.server.config import ServerConfig


@asynccontextmanager
async def serve_process(
    data_dir: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """``python -m bamboo_session.server serve`` on a free port; yields (process, port)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bamboo_session.server",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--log-format",
        "json",
        *args,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        port = await asyncio.wait_for(_read_port(process), 20)
        yield process, port
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _read_port(process: asyncio.subprocess.Process) -> int:
    assert process.stderr is not None
    while True:
        line = (await process.stderr.readline()).decode()
        assert line, "server exited before listening"
        found = re.search(r"listening on [\d.]+:(\d+)", line)
        if found:
            return int(found.group(1))


async def test_sigterm_closes_connections_with_1012_and_exits_0_then_resume_works(
    tmp_path: Path,
) -> None:
    async with serve_process(tmp_path) as (process, port):
        url = f"ws://127.0.0.1:{port}/api/v1/stream/s1"
        async with connect(url, open_timeout=5) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            welcome = json.loads(await ws.recv())
            for i in range(3):
                await ws.send(
                    json.dumps(
                        {"type": "event", "id": i, "event": {"type": "token", "content": str(i)}}
                    )
                )
                assert json.loads(await ws.recv())["type"] == "ack"
            process.send_signal(signal.SIGTERM)
            closed = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert closed == {"type": "closed", "reason": "server restarting"}
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1012
        assert await asyncio.wait_for(process.wait(), 10) == 0
    async with serve_process(tmp_path) as (process, port):
        url = f"ws://127.0.0.1:{port}/api/v1/stream/s1"
        async with connect(url, open_timeout=5) as ws:
            hello = {"type": "hello", "last_seq": 1, "epoch": welcome["epoch"]}
            await ws.send(json.dumps(hello))
            resumed = json.loads(await ws.recv())
            assert resumed["resumed"] is True and resumed["replay"] == 2
            seqs = [json.loads(await ws.recv())["seq"] for _ in range(2)]
            assert seqs == [2, 3]
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), 10) == 0


def test_bad_flag_values_fail_with_one_line_and_status_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "many"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["bamboo-session: --port: invalid value 'many'"]


def test_environment_sets_defaults_and_flags_win() -> None:
    config = ServerConfig.from_env(
        {"BAMBOO_PORT": "9001", "BAMBOO_PING_INTERVAL": "none", "BAMBOO_COMPRESSION": "yes"}
    )
    assert config.port == 9001 and config.ping_interval is None and config.compression is True
    with pytest.raises(ValueError, match="BAMBOO_MAX_SESSIONS"):
        ServerConfig.from_env({"BAMBOO_MAX_SESSIONS": "lots"})
