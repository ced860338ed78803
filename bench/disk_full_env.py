"""The disk-full soak's environment (bench/disk_full_soak.py): the small tmpfs it mounts,
fills and remounts, and the server under test as a subprocess read back over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .disk_full_clients import key_of

ROOT = Path(__file__).resolve().parent.parent
MOUNT = Path("/tmp/r340-full")


def mount(size: str, inodes: int) -> None:
    MOUNT.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes}", "tmpfs", str(MOUNT)],
        check=True,
    )


def remount(mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(MOUNT)], check=True)


def unmount() -> None:
    subprocess.run(["umount", str(MOUNT)], check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fill(path: Path) -> None:
    """Writes ``path`` until the file system refuses (from outside the server)."""
    with contextlib.suppress(OSError), path.open("ab") as out:
        chunk = b"x" * 65536
        while True:
            out.write(chunk)
            out.flush()


class Server:
    """The server as a subprocess on a free loopback port, its log appended to a file."""

    def __init__(self, store_url: str, log_path: Path) -> None:
        self.store_url = store_url
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--store", self.store_url]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-format", "json"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, cwd=ROOT)

    async def wait_ready(self, seconds: float) -> bool:
        """Whether /healthz answered within ``seconds`` (False: it exited or stayed mute)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            if (await self.get("/healthz"))[0] == 200:
                return True
            await asyncio.sleep(0.2)
        return False

    async def get(self, path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            url = f"http://127.0.0.1:{self.port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode(errors="replace")
            except (OSError, TimeoutError) as exc:
                return 0, str(exc)

        return await asyncio.to_thread(fetch)

    def rss_kib(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


async def stored_log(server: Server, session_id: str) -> tuple[list[tuple[int, str]], str | None]:
    """(seq, key) of every event the store holds for ``session_id``, over HTTP."""
    records: list[tuple[int, str]] = []
    while True:
        after = records[-1][0] if records else 0
        status, body = await server.get(
            f"/api/v1/sessions/{session_id}/events?after_seq={after}&limit=1000"
        )
        if status != 200:
            return records, f"{session_id}: events answered {status}: {body[:200]}"
        page = json.loads(body)["events"]
        if not page:
            return records, None
        records += [(e["seq"], key_of(e["event"])) for e in page]
