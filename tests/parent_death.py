"""Processes the tests start that end with the process that started them (Linux):
SIGKILL asked for (``PR_SET_PDEATHSIG``) in the child between its fork and its exec, so
that a test process killed (SIGKILL, an xdist worker's crash, a pytest-timeout kill)
leaves no server, redis-server or node running. Elsewhere nothing is asked.

The signal comes when the *thread* that forked the child ends, not its process: it is
asked only of children forked by the main thread (a worker thread of
``asyncio.to_thread`` ends before its process does, and would take the child with it).
tests/fork_server.py asks it of its own children with :func:`end_with`; :func:`ended`
tells the tests that check it whether a process is gone."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ON_LINUX = sys.platform == "linux"
# Loaded before any fork: a child of a threaded process runs no loader between fork
# and exec.
_libc = ctypes.CDLL(None, use_errno=True) if ON_LINUX else None


def end_with(parent_pid: int) -> None:
    """Called in a forked child (Linux): SIGKILL when its parent, ``parent_pid``, ends.
    A parent that ended before the signal was asked for made the child another's
    (getppid() says so): then it ends at once."""
    assert _libc is not None
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def ending_with_this_process(
    then: Callable[[], None] | None = None,
) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` (or asyncio's): the child ends with
    this process, then ``then`` runs (a test's own, e.g. a resource limit). Only
    ``then`` off Linux, or off the main thread."""
    if not ON_LINUX or threading.current_thread() is not threading.main_thread():
        return then
    parent_pid = os.getpid()

    def end_with_this_process() -> None:
        end_with(parent_pid)
        if then is not None:
            then()

    return end_with_this_process


def ended(pid: int, wait: float = 10.0) -> bool:
    """Whether the process ``pid`` ended (or is a zombie: ended, not yet reaped) within
    ``wait`` seconds; a condition polled, not a speed: a live one fails after the wait."""
    deadline = time.monotonic() + wait
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
