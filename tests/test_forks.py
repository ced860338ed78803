"""The fork server (tests/fork_server.py, tests/forks.py) against a fresh interpreter:
a forked child runs a script as ``python script args`` would, in what the tests assert
of the processes they fork (exit status, output, environment, working directory); and
neither the server nor its child outlives the test process that started them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.forks import ForkedChild
from tests.parent_death import ended

REPO = Path(__file__).resolve().parent.parent

# How it ends is the first argument; what it saw of its start is printed before.
SCRIPT = """\
import atexit, os, sys, threading
print(sys.argv, sys.path[0], os.getcwd(), sorted(os.environ.items()))
print(type(sys.stdout.buffer).__name__, sys.stdout.line_buffering, sys.stderr.line_buffering)
sys.stdout.write("no newline, flushed at exit;")
atexit.register(print, "atexit ran")
threading.Thread(target=lambda: print("a thread joined at exit;", end="")).start()
end = sys.argv[1]
if end == "exit-message":
    sys.exit("why")
if end == "exit-3":
    sys.exit(3)
if end == "interrupt":
    raise KeyboardInterrupt
if end == "error":
    raise ValueError("boom")
"""


@pytest.mark.parametrize("end", ["return", "exit-message", "exit-3", "interrupt", "error"])
@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_a_forked_script_ends_and_prints_as_a_fresh_interpreter(
    tmp_path: Path, end: str, unbuffered: str
) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    # A locale set: with none, a fresh interpreter sets LC_CTYPE itself (PEP 538).
    env = {"LC_ALL": "C.UTF-8", "ONLY_THIS": "1", "PYTHONUNBUFFERED": unbuffered}
    argv = [str(script), end]
    fresh = subprocess.run(
        [sys.executable, *argv], capture_output=True, env=env, cwd=tmp_path, timeout=30
    )
    child = ForkedChild(argv, env=env, cwd=tmp_path)
    out, err = child.communicate(timeout=30)
    assert (child.returncode, out) == (fresh.returncode, fresh.stdout)
    # A traceback's last lines are the script's: the runner's frames come before.
    assert err.splitlines()[-2:] == fresh.stderr.splitlines()[-2:]


# A test process of its own: it forks a child that would run for ever, prints its fork
# server's pid and its child's once the child runs, then waits to be killed.
HOLDER = """\
import sys, time
from tests import forks
child = forks.ForkedChild([sys.argv[1]])
child.stdout.readline()
print(forks._server[0].pid, child.pid, flush=True)
time.sleep(600)
"""
RUN_FOR_EVER = "import time\nprint('up', flush=True)\ntime.sleep(600)\n"


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG and pidfd: Linux")
@pytest.mark.parametrize("killed", ["test process", "fork server"])
def test_a_killed_test_process_or_fork_server_leaves_no_child_running(
    tmp_path: Path, killed: str
) -> None:
    script = tmp_path / "run_for_ever.py"
    script.write_text(RUN_FOR_EVER)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(script)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    server_pid = child_pid = 0
    try:
        assert holder.stdout is not None
        server_pid, child_pid = map(int, holder.stdout.readline().split())
        os.kill(holder.pid if killed == "test process" else server_pid, signal.SIGKILL)
        assert ended(server_pid) and ended(child_pid)
    finally:
        for pid in (child_pid, server_pid, holder.pid):  # survivors of a failed test
            if pid and not ended(pid, wait=0.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        holder.wait(10)
