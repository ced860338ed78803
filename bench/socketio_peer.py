"""The Socket.IO peer on the Python side: is it runnable here, installing it on demand,
and how to start its server (bench/socketio/server.js) and its load driver
(bench/socketio/driver.js, a Node process speaking bench/workers.py's JSON lines).

socket.io and socket.io-client are pinned by bench/socketio/package-lock.json and
installed with ``npm ci --prefix bench/socketio`` the first time a bench needs them
(node_modules is not committed). Without ``node`` the peer is skipped, with one line
saying why.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

from . import common
from .workers import DriverProcess

SOCKETIO_DIR = common.BENCH_DIR / "socketio"
NODE_MAJOR_MIN = 18
NPM_TIMEOUT = 600
KIND = "socketio"


@functools.cache
def unavailable() -> str | None:
    """Why the Socket.IO peer cannot run here, or None when it can (installing it first
    when bench/socketio/node_modules is missing)."""
    node = shutil.which("node")
    if node is None:
        return "node not found (install Node.js >= 18: apt-get install -y nodejs npm)"
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    major = version.stdout.strip().lstrip("v").split(".")[0]
    if not major.isdigit() or int(major) < NODE_MAJOR_MIN:
        return f"node {version.stdout.strip()} is too old (socket.io 4.8 needs >= 18)"
    if (SOCKETIO_DIR / "node_modules").is_dir():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found to install socket.io (apt-get install -y npm)"
    print("socketio: installing socket.io (npm ci --prefix bench/socketio)", flush=True)
    done = subprocess.run(
        [npm, "ci", "--prefix", str(SOCKETIO_DIR), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT,
    )
    if done.returncode != 0:
        shutil.rmtree(SOCKETIO_DIR / "node_modules", ignore_errors=True)  # retry next time
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"npm ci --prefix bench/socketio failed ({done.returncode}): {last}"
    return None


def skip_line() -> str | None:
    """The one line a bench prints when it skips the peer, or None when it runs."""
    reason = unavailable()
    return None if reason is None else f"{KIND:12s} skipped: {reason}"


def server(log_path: Path) -> common.ServerProcess:
    node = shutil.which("node") or "node"
    argv = [node, str(SOCKETIO_DIR / "server.js"), "--host", common.HOST, "--port", "{port}"]
    return common.ServerProcess(KIND, argv, log_path)


def driver(name: str, config: dict[str, object]) -> DriverProcess:
    node = shutil.which("node") or "node"
    return DriverProcess(name, [node, str(SOCKETIO_DIR / "driver.js")], config)


def url(server: common.ServerProcess) -> str:
    return f"http://{common.HOST}:{server.port}"
