"""A real ``bamboo-session serve`` in a child process, for the tests that need one: to
kill it, to give it resource limits, or to read everything it logs.

Its stderr (every log line as JSON, "listening on HOST:PORT" the first) goes to a
file, which :meth:`ServerProcess.log_records` parses afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.parent_death import ending_with_this_process

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(rb"listening on ([^\s:\"]+|\[[^\]]*\]):(\d+)")


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *extra: str,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.extra: Sequence[str] = extra
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.env: dict[str, str] | None = None  # its environment (None: this process's)
        # The module run (``python -m``): bench.faketime_server for a server under
        # libfaketime, whose time.sleep that library breaks (see that module).
        self.module = "bamboo_session.server"

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.module,
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir),
            "--log-format",
            "json",
            *self.extra,
        ]

    def start(self, timeout: float = 60.0) -> int:
        """Starts the server and returns its port once it listens. The timeout only
        guards against a start that hangs: a start costs about half a second of CPU,
        and under four test processes on two cores that stretched past 15 s."""
        return self._listening(self._launch(), timeout)

    async def start_in_loop(self, timeout: float = 60.0) -> int:
        """:meth:`start` from a test's event loop without blocking it: started from the
        loop's thread, so that it ends with the test process (tests/parent_death.py: a
        worker thread of ``asyncio.to_thread`` would take it along when it ended), and
        waited for in a worker thread."""
        offset = self._launch()
        return await asyncio.to_thread(self._listening, offset, timeout)

    def _launch(self) -> int:
        """The process started; the offset in its log where its lines begin."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd=ROOT,
            env=self.env,
            preexec_fn=ending_with_this_process(self.preexec_fn),
        )
        log.close()
        return offset

    def _listening(self, offset: int, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                match = _LISTENING.search(f.read())
            if match:
                self.port = int(match.group(2))
                return self.port
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.log_tail()}")
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout} s: {self.log_tail()}")

    def url(self, session_id: str | None = None) -> str:
        base = f"ws://127.0.0.1:{self.port}/api/v1/stream"
        return base if session_id is None else f"{base}/{session_id}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no checkpoint."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then the exit status (graceful shutdown)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_tail(self, size: int = 2000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log line; a line that is not JSON (a bare traceback) fails here.
        A last line with no newline is left out: a SIGKILL may cut a write where it
        crosses a page of the file (the kernel checks for it between pages)."""
        text = self.log_path.read_text()
        if not text.endswith("\n"):
            text = text.rpartition("\n")[0]
        records = []
        for line in text.splitlines():
            if not line.strip():
                continue
            records.append(json.loads(line))
        return records

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def assert_no_tracebacks(records: list[dict[str, Any]], allowed: Sequence[str] = ()) -> None:
    """No log record carries an exception, and none is at error level or worse, except
    the events that start with one of ``allowed``."""
    for record in records:
        if str(record.get("event")).startswith(tuple(allowed)):
            continue
        assert "exception" not in record and "exc_info" not in record, record
        assert record.get("level") not in ("error", "critical"), record
        assert "Traceback" not in json.dumps(record), record
