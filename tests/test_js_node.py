"""The JavaScript on Node: the client's tests (tests/js/client.test.mjs, node:test)
against a real server, and a type check of the JSDoc of server/web/. Node 22+ has a
global WebSocket; Node 20.10+ gets it from a flag. Without a Node that has one, or
without TypeScript installed (npm ci --prefix tests/js), each skips with one line
saying what to install."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import run_server

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = ROOT / "tests" / "js" / "client.test.mjs"
HINT = "install Node.js 22+ (or 20.10+) for the Node test of the JavaScript client"


@functools.cache
def node_command() -> list[str] | None:
    """``node`` with whatever flag gives it a global WebSocket, or None."""
    node = shutil.which("node")
    if node is None:
        return None
    for flags in ([], ["--experimental-websocket"]):
        probe = [node, *flags, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"]
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return [node, *flags]
    return None


async def test_js_client_on_node() -> None:
    command = node_command()
    if command is None:
        pytest.skip(HINT)
    async with run_server() as server:
        process = await asyncio.create_subprocess_exec(
            *command,
            "--test",
            "--test-reporter=tap",
            str(TEST_FILE),
            cwd=ROOT,
            env={**os.environ, "BAMBOO_URL": f"ws://127.0.0.1:{server.port}"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    assert "# pass 3" in report and "# fail 0" in report, report


def test_jsdoc_types_check() -> None:
    """The JSDoc of the client and the console type-checks under ``tsc --strict``, so
    editors complete what it says. TypeScript comes from tests/js/package-lock.json."""
    tsc = ROOT / "tests" / "js" / "node_modules" / ".bin" / "tsc"
    if not tsc.exists():
        pytest.skip("type check of the JavaScript: npm ci --prefix tests/js")
    result = subprocess.run(
        [str(tsc), "-p", str(ROOT / "tests" / "js")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
