"""Processes the tests start that end with the process that started them (Linux):
SIGKILL asked for (``PR_SET_PDEATHSIG``) in the child between its fork and its exec, so
that a test process killed (SIGKILL, an xdist worker's crash, a pytest-timeout kill)
leaves no server, redis-server or node running. Elsewhere nothing is asked.

The signal comes when the *thread* that forked the child ends, not its process: it is
asked only of children forked by the main thread (a worker thread of
``asyncio.to_thread`` ends before its process does, and would take the child with it).
tests/fork_server.py asks it of its own children with :func:`end_with`; :func:`ended`
tells the tests that check it whether a process is gone. The signal reaches the child
only, not the children it starts: :func:`group_ending_with_this_process` kills a whole
process group when this process ends (tests/node_runs.py: ``node --test``'s file
processes)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
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


# Waits for the end of its stdin, then kills the group named by its first argument.
_GROUP_WATCHER = 'read -r _; kill -s KILL -- "-$0"'


@contextlib.contextmanager
def group_ending_with_this_process(pgid: int) -> Iterator[None]:
    """While within, process group ``pgid`` is killed (SIGKILL) should this process end,
    however it ends: a watcher (``sh``) waits for the end of a pipe whose only writer
    is this process, which the kernel closes with it. The watcher has a session of its
    own, out of reach of a terminal's SIGINT and of the group it watches. On the way
    out it is stopped by its pid, without acting: the caller ends the group then,
    before it reaps the group's leader, whose pid could be another's afterwards."""
    read_end, write_end = os.pipe()  # close-on-exec: no child started later holds it
    try:
        watcher = subprocess.Popen(
            ["sh", "-c", _GROUP_WATCHER, str(pgid)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    try:
        yield
    finally:
        watcher.kill()
        watcher.wait()
        os.close(write_end)


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
