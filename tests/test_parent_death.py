"""tests/parent_death.py: a child started with ``ending_with_this_process`` ends when
the test process that started it is killed; one started from a worker thread is not
ended with that thread."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.parent_death import ended

REPO = Path(__file__).resolve().parent.parent

# A test process of its own: a child from its main thread, one from a thread that ended
# since, their pids printed, then it waits to be killed.
HOLDER = """\
import os, subprocess, threading, time
from tests.parent_death import ending_with_this_process
def start():
    return subprocess.Popen(["sleep", "600"], preexec_fn=ending_with_this_process()).pid
children = [start()]
thread = threading.Thread(target=lambda: children.append(start()))
thread.start()
thread.join()
# join() returns before the thread's OS task is gone (and, with it, any signal sent).
deadline = time.monotonic() + 10
while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
    time.sleep(0.01)
print(*children, flush=True)
time.sleep(600)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG: Linux")
def test_a_child_of_the_main_thread_ends_with_its_killed_test_process() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=REPO, stdout=subprocess.PIPE)
    children: list[int] = []
    try:
        assert holder.stdout is not None
        children = [int(pid) for pid in holder.stdout.readline().split()]
        from_main, from_thread = children
        # The thread's end took nothing with it: only the process's end does.
        assert not ended(from_thread, wait=0.0) and not ended(from_main, wait=0.0)
        os.kill(holder.pid, signal.SIGKILL)
        assert ended(from_main)
        assert not ended(from_thread, wait=0.0)
    finally:
        for pid in children:
            if not ended(pid, wait=0.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        holder.kill()
        holder.wait(10)
