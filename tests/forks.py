"""Children of the crash tests (tests/kills.py) and the CLI's tools, forked by
tests/fork_server.py, one server per test process, started at the first child and
stopped by pid at the end of the module (or at exit), so that its children's CPU is
counted with the module's: each child a real process, killed with a real SIGKILL,
without the third to half a second of CPU a fresh interpreter's imports took (the
CLI's own start as a fresh process is tested in tests/test_server_cli.py).
:class:`ForkedChild` answers what the tests asked of a ``subprocess.Popen``:
``stdout``, ``kill``, ``communicate``, ``returncode``."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

SERVER = Path(__file__).with_name("fork_server.py")
MESSAGE_BYTES = 64 * 1024

_server: tuple[subprocess.Popen[bytes], socket.socket] | None = None
# The server forks one child at a time, and answers its end before the next request:
# a child a failed (or timed-out) test left running is ended before the next one starts.
_running: ForkedChild | None = None


def _channel() -> socket.socket:
    """The fork server's socket, the server started on first use."""
    global _server
    if _server is None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            process = subprocess.Popen(
                [sys.executable, str(SERVER)],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
            )
        _server = (process, ours)
    return _server[1]


def stop() -> None:
    """The fork server stopped, if it runs (tests/conftest.py: at each module's end)."""
    global _server
    if _server is None:
        return
    _end_running()
    process, channel = _server
    _server = None
    channel.close()  # the server's end of its requests: it returns
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ForkedChild:
    """``python argv…`` (a script, or ``-m module``), forked by the server; its stdout a
    pipe, its stderr a file. As ``subprocess.Popen``'s: its environment ``env``, its
    working directory ``cwd``, each this process's now when None."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        global _running
        request = json.dumps(
            {
                "argv": argv,
                "env": dict(os.environ if env is None else env),
                "cwd": str(cwd or Path.cwd()),
            }
        ).encode()
        if len(request) > MESSAGE_BYTES:  # the server would read it cut short
            raise ValueError(f"a fork request of {len(request)} bytes: at most {MESSAGE_BYTES}")
        self.channel = _channel()
        _end_running()
        read_end, write_end = os.pipe()
        self.stderr_file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by communicate)
        try:
            socket.send_fds(self.channel, [request], [write_end, self.stderr_file.fileno()])
        finally:
            os.close(write_end)
        self.stdout: IO[bytes] = os.fdopen(read_end, "rb", buffering=0)
        self.pid: int = self._answer()["pid"]
        self.returncode: int | None = None
        _running = self

    def _answer(self, timeout: float | None = None) -> dict[str, Any]:
        self.channel.settimeout(timeout)
        try:
            answer: dict[str, Any] = json.loads(self.channel.recv(MESSAGE_BYTES))
        except (TimeoutError, BlockingIOError):  # BlockingIOError: a timeout of 0
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0) from None
        finally:
            self.channel.settimeout(None)
        return answer

    def kill(self) -> None:
        """SIGKILL, unless the server already told how it ended (its pid may be
        another's by now)."""
        if self.returncode is None:
            try:
                self.returncode = self._answer(timeout=0.0)["returncode"]
            except subprocess.TimeoutExpired:
                # It may have ended since: then the server has its answer, read at _end.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def communicate(self, timeout: float) -> tuple[bytes, bytes]:
        """The rest of its stdout and all its stderr, once it ended; a child still
        running after ``timeout`` seconds is killed and ``TimeoutExpired`` raised (as
        ``subprocess.run`` does), so that no test waits on it for ever."""
        deadline = time.monotonic() + timeout
        out = bytearray()
        try:
            while chunk := self._read_stdout(deadline):
                out += chunk
        except subprocess.TimeoutExpired:
            self.kill()
            self._end(timeout=10)
            raise
        self._end(max(deadline - time.monotonic(), 10.0))  # its stdout ended: so has it
        self.stderr_file.seek(0)
        err = self.stderr_file.read()
        self.stderr_file.close()
        return bytes(out), err

    def _read_stdout(self, deadline: float) -> bytes:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.stdout], [], [], left)[0]:
            raise subprocess.TimeoutExpired(str(self.pid), left)
        return self.stdout.read(MESSAGE_BYTES) or b""

    def _end(self, timeout: float) -> None:
        """Its returncode, from the server's answer; its stdout closed."""
        global _running
        self.stdout.close()
        if self.returncode is None:
            self.returncode = self._answer(timeout)["returncode"]
        if _running is self:
            _running = None


def _end_running() -> None:
    """The child started last, if its end was never read (its test failed or timed
    out before), killed and waited for: the server answers nothing else before."""
    child = _running
    if child is not None:
        child.kill()
        child._end(timeout=30)
        child.stderr_file.close()


atexit.register(stop)
