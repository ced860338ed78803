"""Shared pieces of the bench scripts: servers as subprocesses, fd limits, RSS, stats.

Every script starts what it measures as a separate process on 127.0.0.1 and drives it
over real sockets, so the driver's own CPU and memory never count as the server's. The
machine is shared and noisy: each script measures the baseline relay in the same
invocation and reports ratios, which hold where absolute numbers drift.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from bamboo_session.server.process_setup import raise_open_file_limit, settle_garbage_collector

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
OUT_DIR = BENCH_DIR / "out"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0

T = TypeVar("T")
_LISTENING = re.compile(rb"listening on ([0-9.]+):(\d+)")


def full_mode() -> bool:
    """``BENCH_FULL=1``: the sizes the issue asks for, instead of minutes-long defaults."""
    return os.environ.get("BENCH_FULL", "") not in ("", "0")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop (the server runs on it too, and the driver shares the cores)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


class ServerProcess:
    """A server started as a subprocess; ``port`` read from its "listening on" line."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._drain: threading.Thread | None = None
        self._profiler: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # the server's environment (None: ours)

    def start(self, port: int = 0) -> ServerProcess:
        argv = [a.replace("{port}", str(port)) for a in self.argv]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=self.env,
            preexec_fn=raise_open_file_limit,
        )
        assert self.proc.stderr is not None
        log = self.log_path.open("ab")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            line = self.proc.stderr.readline()
            if not line:
                log.close()
                raise RuntimeError(f"{self.name} exited before listening; see {self.log_path}")
            log.write(line)
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(2))
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start in {START_TIMEOUT} s")
        stream = cast(io.BufferedReader, self.proc.stderr)

        def drain() -> None:  # keep the pipe from filling; keep the log for post-mortems
            with log:
                for chunk in iter(lambda: stream.read1(65536), b""):
                    log.write(chunk)

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        self._start_profiler()
        return self

    def _start_profiler(self) -> None:
        """``BENCH_PROFILE=DIR``: sample the Bamboo server with py-spy while it runs
        (collapsed stacks in DIR, one file per server process; read with bench.profile)."""
        target = os.environ.get("BENCH_PROFILE")
        if not target or self.name != "bamboo":
            return
        out = Path(target) / f"{Path(sys.argv[0]).stem}-{self.pid}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        self._profiler = subprocess.Popen(
            [
                str(spy),
                "record",
                "--pid",
                str(self.pid),
                "--format",
                "raw",
                "--rate",
                "200",
                "--threads",
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait (SIGKILL past ``timeout``); the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._drain is not None:
            self._drain.join(5)
        if self._profiler is not None:  # it writes its output once the server is gone
            try:
                self._profiler.wait(60)
            except subprocess.TimeoutExpired:
                self._profiler.kill()
        return code

    def url(self, path: str) -> str:
        return f"ws://{HOST}:{self.port}{path}"


def bamboo_server(data_dir: Path, log_path: Path, *extra: str) -> ServerProcess:
    """The Bamboo server, fsync durability unless ``extra`` says otherwise."""
    argv = [
        sys.executable,
        "-m",
        "bamboo_session.server",
        "serve",
        "--host",
        HOST,
        "--port",
        "{port}",
        "--data-dir",
        str(data_dir),
        "--durability",
        "fsync",
        "--log-format",
        "json",
        "--log-level",
        "warning",
        "--max-sessions",
        "1000000",
        "--session-create-rate",  # benches create a thousand sessions at a time
        "0",
        "--max-connections",  # BENCH_FULL opens 10,000 connections, the default cap
        "0",
        *extra,
    ]
    return ServerProcess("bamboo", argv, log_path)


def baseline_server(log_path: Path) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.baseline_relay", "--host", HOST, "--port", "{port}"]
    return ServerProcess("baseline", argv, log_path)


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=f"bamboo-bench-{prefix}-") as tmp:
        yield Path(tmp)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads, ended ones included) and of its
    live children (the JSONL store's sync helper, a Node peer's workers), in seconds."""
    return sum(_own_cpu(p) for p in (pid, *_children(pid)))


def _own_cpu(pid: int) -> float:
    """The kernel's CPU clock of process ``pid``, to the nanosecond. /proc/PID/stat gives
    the same time cut to whole clock ticks (10 ms): a short run's difference read 0."""
    try:
        return time.clock_gettime(_process_cpu_clock(pid))
    except OSError:  # a child that just ended (EINVAL), or a kernel without the clock
        return _own_ticks(pid) / os.sysconf("SC_CLK_TCK")


def _process_cpu_clock(pid: int) -> int:
    """clock_getcpuclockid(3) for another process, which Python does not wrap: Linux
    encodes the clock of a process as its inverted pid, shifted, with CPUCLOCK_SCHED."""
    return ((~pid) << 3) | 2


def _own_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # a child that just ended
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _children(pid: int) -> list[int]:
    """The live children of ``pid``: none once it ended (a driver process measured as
    it exits: its own time then reads 0, ``_own_ticks``), rather than an error that
    ends the run."""
    children: list[int] = []
    with contextlib.suppress(FileNotFoundError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


def settle_driver_collector() -> None:
    """For a driver process once its peers are connected: what exists now leaves the
    cycle collector's sight and young collections come less often, as in the server
    (server/cli.py). Without it, the reconnect storm's driver spent 30% of its CPU in
    the collector, in full collections of about 220 ms that stalled every peer it
    drives: the figure measured the driver."""
    settle_garbage_collector()


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, int(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "python": sys.version.split()[0]}


def command_line() -> str:
    module = Path(sys.argv[0]).stem
    env = "BENCH_FULL=1 " if full_mode() else ""
    return f"{env}python -m bench.{module} " + " ".join(sys.argv[1:])


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")


def ratio_line(question: str, name: str, value: float, goal: str) -> str:
    """The one line per figure that run_all and the tests look for."""
    return f"RATIO {question} {name} = {value:.3f} (goal {goal})"


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {"command": command_line(), **machine(), **results}
    path.write_text(json.dumps(results, indent=2) + "\n")


async def gather_bounded(coroutines: Sequence[Any], limit: int) -> list[Any]:
    """Run coroutines with at most ``limit`` at a time (connection storms)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


def rss_kib_self() -> int:
    return rss_kib(os.getpid())
