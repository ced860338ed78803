"""The outside check of the wire contract on Node: tests/js/protocol_*.test.mjs, a raw
RFC 6455 client (tests/js/wire.mjs, over node:net: no WebSocket library, no project
code) that checks the server against PROTOCOL.md's statements, frame by frame. It starts
its own servers with this interpreter (on 127.0.0.1, a free port, a fresh data
directory each), kills one with SIGKILL mid-stream to check resume, and stops every one
by pid. Without ``node`` it skips with one line."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_FILES = sorted((ROOT / "tests" / "js").glob("protocol_*.test.mjs"))
NODE_TIMEOUT = 120
CHECKS = 39


# Past the node run's own bound, so that its process group is killed here: when
# pytest-timeout ended the test first (both 120 s, a loaded run), node and its servers
# were left running.
@pytest.mark.timeout(NODE_TIMEOUT + 30)
async def test_wire_contract_from_outside() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("install Node.js 18+ for the outside check of the wire contract")
    process = await asyncio.create_subprocess_exec(
        node,
        "--test",
        "--test-reporter=tap",
        # Every file at once, each with its servers (one to four): the 10 s hello
        # deadline of protocol_frames (awaited by its last test) no longer waits after
        # the others.
        f"--test-concurrency={len(TEST_FILES)}",
        *map(str, TEST_FILES),
        cwd=ROOT,
        env={**os.environ, "BAMBOO_PYTHON": sys.executable},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its servers are in its process group: one kill ends all
    )
    assert process.stdout is not None
    reading = asyncio.create_task(process.stdout.read())
    try:
        await asyncio.wait_for(process.wait(), NODE_TIMEOUT)
    except TimeoutError:
        pass  # killed below; the report says how far it got
    finally:
        if process.returncode is None:  # over its time, or the test was cancelled
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    report = (await reading).decode(errors="replace")
    assert process.returncode is not None and process.returncode >= 0, (
        f"the outside check took over {NODE_TIMEOUT} s:\n{report}"
    )
    assert process.returncode == 0, report
    assert f"# pass {CHECKS}" in report and "# fail 0" in report, report
