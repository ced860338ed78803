"""A test process killed during a ``node --test`` run (tests/node_runs.py) leaves no
Node process: not ``node --test``, nor the process it runs each file in, whatever
ended the test process (SIGKILL, as an xdist worker's crash or a pytest-timeout kill;
SIGTERM; SIGINT, a Ctrl-C). Real Node, a real test process (this interpreter), a
test file that waits for ever; what is left is read from Linux's /proc."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.parent_death import ending_with_this_process

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")
# Seconds each wait for a condition may take on a loaded machine before it fails.
WAIT = 30.0

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc"),
    pytest.mark.skipif(shutil.which("node") is None, reason="no node"),
]

# Says it runs (a file beside it) once a line it wrote went to node --test (stdout, a
# pipe: written at once, on Linux); a file process that writes after its runner died
# ends there (EPIPE), with or without a fix: it is left running only when idle.
FOREVER = """import { writeFileSync } from "node:fs";
import { test } from "node:test";
test("waits for ever", async () => {
  console.log("running");
  writeFileSync(new URL("running", import.meta.url), "");
  await new Promise((resolve) => setTimeout(resolve, 3_600_000));
});
"""

# The test process: a node --test run of one file, as tests/test_js.py starts one.
TEST_PROCESS = """import asyncio, shutil, sys
from pathlib import Path
from tests.node_runs import run_node_tests
file = Path(sys.argv[1])
asyncio.run(run_node_tests([shutil.which("node")], [file], cwd=file.parent, env={}, timeout=3600))
"""


def stat_of(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat``'s fields after the command's, from the state on; None once
    the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def live_pids() -> list[int]:
    """The processes that run, not zombies (ended, not yet reaped)."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if (stat := stat_of(pid)) is not None and stat[0] not in "ZX"]


def group_members(pgid: int) -> list[int]:
    return [
        pid for pid in live_pids() if (stat := stat_of(pid)) is not None and stat[2] == str(pgid)
    ]


def children_of(pid: int) -> list[int]:
    return [p for p in live_pids() if (stat := stat_of(p)) is not None and stat[1] == str(pid)]


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def waited_for(condition: Callable[[], T]) -> T:
    """``condition()`` once it is true, polled for up to ``WAIT`` seconds; else its last."""
    deadline = time.monotonic() + WAIT
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("ending", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_killed_test_process_leaves_no_node(ending: signal.Signals, tmp_path: Path) -> None:
    test_file = tmp_path / "forever.test.mjs"
    test_file.write_text(FOREVER)
    test_process = subprocess.Popen(
        [sys.executable, "-c", TEST_PROCESS, str(test_file)],
        cwd=ROOT,
        preexec_fn=ending_with_this_process(),
    )
    group = 0
    try:
        runners = waited_for(
            lambda: [p for p in children_of(test_process.pid) if "--test" in command_line(p)]
        )
        assert runners, "node --test did not start"
        group = runners[0]
        assert waited_for((tmp_path / "running").exists), "the file's test did not start"
        file_processes = [p for p in children_of(group) if str(test_file) in command_line(p)]
        assert file_processes, "the file runs in a process of its own"

        test_process.send_signal(ending)
        test_process.wait(WAIT)
        gone = waited_for(lambda: not group_members(group))
        assert gone, f"left running: {[command_line(p) for p in group_members(group)]}"
    finally:
        if test_process.poll() is None:
            test_process.kill()
            test_process.wait()
        if group and group_members(group):  # what the test found left: not for ever
            os.killpg(group, signal.SIGKILL)
