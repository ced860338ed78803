"""The crash soak's server child (bench/crash_soak.py, and the slow-consumer bench): a
Bamboo server subprocess on a data directory that survives it, started, SIGKILLed and
restarted; and, run as ``python -m bench.soak_server DATA_DIR --wal-segment-age S
[--commit-window W]``, the server of the soak's WAL cycles, whose JSONL store retires
WAL segments that soon."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(rb"listening on ([^\s:\"]+|\[[^\]]*\]):(\d+)")


class Server:
    """The server child: started, SIGKILLed, restarted on the same directory."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        extra: tuple[str, ...] = ("--durability", "fsync", "--rate-limit", "0"),
        store: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.store = store  # a store URL; None: the JSONL store in data_dir
        self.log_path = log_path
        self.extra = extra
        self.wal_segment_age: float | None = None  # set: a server that retires that soon
        self.commit_window = 0.0  # the JSONL store's, for the WAL cycles' server
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def argv(self) -> list[str]:
        if self.wal_segment_age is not None:
            return [
                sys.executable,
                "-m",
                "bench.soak_server",
                str(self.data_dir),
                "--wal-segment-age",
                str(self.wal_segment_age),
                "--commit-window",
                str(self.commit_window),
            ]
        where = ("--store", self.store) if self.store else ("--data-dir", str(self.data_dir))
        return [
            sys.executable,
            "-m",
            "bamboo_session.server",
            "serve",
            "--port",
            "0",
            *where,
            "--log-format",
            "json",
            *self.extra,
        ]

    def start(self, timeout: float = 60.0) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                match = _LISTENING.search(f.read())
            if match:
                self.port = int(match.group(2))
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}; see {self.log_path}")
            time.sleep(0.01)
        raise RuntimeError(f"server did not start in {timeout} s; see {self.log_path}")

    def url(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream/{session_id}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


async def serve_child(data_dir: Path, wal_segment_age: float, commit_window: float = 0.0) -> int:
    """The server of the WAL cycles: ``serve`` as the CLI runs it, on a JSONL store
    whose WAL segments are retired after ``wal_segment_age`` seconds (and whose group
    commits start at most once per ``commit_window`` seconds)."""
    from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
    from bamboo_session.server.app import BambooServer
    from bamboo_session.server.config import ServerConfig
    from bamboo_session.server.logs import configure_logging

    configure_logging("json")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    config = JsonlStorageConfig(
        data_dir, durability="fsync", wal_segment_age=wal_segment_age, commit_window=commit_window
    )
    storage = await JsonlStorage.open(config)
    server = BambooServer(ServerConfig(port=0, data_dir=str(data_dir), rate_limit=0), storage)
    try:
        await server.start()
        await stop.wait()
        await server.stop()
    finally:
        await storage.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="the crash soak's WAL-cycle server")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--wal-segment-age", type=float, default=0.2, help="seconds")
    parser.add_argument("--commit-window", type=float, default=0.0, help="seconds")
    args = parser.parse_args()
    return asyncio.run(serve_child(args.data_dir, args.wal_segment_age, args.commit_window))


if __name__ == "__main__":
    raise SystemExit(main())
