"""The process that starts the crash tests' children (tests/kills.py) and the CLI's
tools (tests/test_cli_offline.py ``tool``) by forking once the children's imports are
done: those imports were most of each child's CPU, and the crash tests start a hundred
children or more, the tools' tests dozens. Run as a script, not collected.

``python tests/fork_server.py`` with a SOCK_SEQPACKET socket as fd 0: each request is a
JSON object, ``{"argv": [...], "env": {...}, "cwd": "..."}``, with two file descriptors,
the child's stdout and stderr. A child is forked per request and runs as ``python argv…``
would in ``cwd`` with ``env`` as its whole environment: a script and its arguments
(``__main__``, its directory first on ``sys.path``), or ``-m module`` and its arguments
(the working directory first on ``sys.path``); its stdout and stderr buffered as that
environment asks (``PYTHONUNBUFFERED``), non-daemon threads and ``atexit`` run at its
end, an uncaught KeyboardInterrupt ends it by SIGINT. The answer is ``{"pid": N}`` at
once, then ``{"returncode": R}`` once it ended (``-9`` when killed with SIGKILL). One
child at a time; the server ends when its socket closes. The server itself runs none of
the children's code: no logging or event loop is configured in what they inherit.

Nothing outlives the test process: it sends nothing while a child runs, so its socket's
end then means it is gone, killed or crashed; the server kills the child and ends. On
Linux a child is also killed (PR_SET_PDEATHSIG) when the server ends, however it ends.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback
from typing import Any

# This script's directory, tests/, is first on sys.path.
from parent_death import end_with

# The children's imports (tests/*_child.py; the CLI and what its offline tools load),
# done once here: no threads, no event loop.
import bamboo_session.persistence
import bamboo_session.persistence.jsonl.storage
import bamboo_session.persistence.sqlite
import bamboo_session.protocol.models
import bamboo_session.server.cli
import bamboo_session.server.tools_store  # noqa: F401

MESSAGE_BYTES = 64 * 1024
POLL_SECONDS = 0.1  # how often a child's end is checked without a pidfd


def serve(channel: socket.socket) -> None:
    server_pid = os.getpid()
    while True:
        message, fds, _flags, _address = socket.recv_fds(channel, MESSAGE_BYTES, 2)
        if not message:
            return
        request = json.loads(message)
        pid = os.fork()
        if pid == 0:
            channel.close()
            run_child(request, fds[0], fds[1], server_pid)
        for fd in fds:
            os.close(fd)  # the child's now: its reader sees the end when the child ends
        channel.send(json.dumps({"pid": pid}).encode())
        returncode = wait_for_child(pid, channel)
        if returncode is None:
            return
        channel.send(json.dumps({"returncode": returncode}).encode())


def wait_for_child(pid: int, channel: socket.socket) -> int | None:
    """The child's exit code once it ended; None when the test process's end of
    ``channel`` became readable first (it sends nothing while a child runs: it is
    gone), the child then killed and reaped. Its end is seen on its pidfd (Linux 5.3);
    without one (another system, an older kernel, a sandbox that refuses the call) it is
    polled, every POLL_SECONDS."""
    child_end = _pidfd(pid)
    watched = [channel] if child_end is None else [channel, child_end]
    timeout = POLL_SECONDS if child_end is None else None
    try:
        while True:
            if channel in select.select(watched, [], [], timeout)[0]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return None
            ended, status = os.waitpid(pid, os.WNOHANG)
            if ended:
                return os.waitstatus_to_exitcode(status)
    finally:
        if child_end is not None:
            os.close(child_end)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no os.pidfd_open, or ENOSYS / EPERM
        return None


def run_child(request: dict[str, Any], stdout: int, stderr: int, server_pid: int) -> None:
    """The forked child: ``python argv…`` with its own stdout, stderr, environment and
    working directory, ended with the server; never returns."""
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    code = 1
    try:
        os.chdir(request["cwd"])
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        if sys.platform == "linux":
            end_with(server_pid)  # the server is single-threaded: its thread's end is its own
        # fd 0 was the server's socket, closed with it: a fresh interpreter's stdin is
        # open, and a file the child opens must not take its number.
        devnull = os.open(os.devnull, os.O_RDONLY)
        if devnull != 0:
            os.dup2(devnull, 0)
            os.close(devnull)
        os.environ.clear()
        os.environ.update(env)
        open_stdio(unbuffered=bool(env.get("PYTHONUNBUFFERED")))
        if argv[0] == "-m":
            sys.argv = argv[1:]  # runpy puts the module's file in sys.argv[0], as -m does
            sys.path[0] = os.getcwd()
            # A preloaded module run by `python -m` is a module of its own, __main__
            # (runpy warns of the copy it would otherwise run beside); a package runs
            # its __main__, and stays the one its preloaded submodules belong to.
            if not hasattr(sys.modules.get(argv[1]), "__path__"):
                sys.modules.pop(argv[1], None)
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        # As the interpreter ends: sys.exit() is 0, sys.exit("why") prints why, then 1.
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT  # the interpreter ends itself by SIGINT, below
    except BaseException:
        traceback.print_exc()
    finally:
        end_child(code)


def open_stdio(*, unbuffered: bool) -> None:
    """sys.stdout and sys.stderr on fds 1 and 2 as a fresh interpreter opens them: the
    server's were made for its own environment, not the child's."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        old = getattr(sys, name)
        raw = io.FileIO(fd, "w", closefd=False)
        stream = io.TextIOWrapper(
            raw if unbuffered else io.BufferedWriter(raw),
            encoding=old.encoding,
            errors=old.errors,
            line_buffering=not unbuffered and (fd == 2 or raw.isatty()),
            write_through=unbuffered,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)


def end_child(code: int) -> None:
    """The interpreter's end: non-daemon threads joined, ``atexit`` run, output flushed,
    then the exit (by SIGINT for a KeyboardInterrupt); never returns."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        code = 120  # as the interpreter's, when its output cannot be flushed at exit
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__":
    serve(socket.socket(fileno=0))
