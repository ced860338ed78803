"""bench/idle_gap.py at a tiny size: both of its drivers (Bamboo's frames, Socket.IO's
Engine.IO packets) reach the server's answers, one line per server and gap. Never
asserts speed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--sessions", "2", "--events", "6", "--rounds", "1", "--warmup", "2", "--idle", "0.1"]


def test_a_lone_event_after_each_gap_is_measured_on_both_servers() -> None:
    from bench import socketio_peer

    reason = socketio_peer.unavailable()  # installs socket.io with npm ci when missing
    if reason is not None:
        pytest.skip(reason)
    argv = [sys.executable, "-m", "bench.idle_gap", str(ROOT), "--peers", "socketio"]
    argv += [*TINY, "--durability", "memory", "--gaps", "0", "200"]
    done = subprocess.run(
        argv, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for server in ("socketio", f"{ROOT.name}-memory"):
        gaps = [
            line.split(" us ")[0].split()[-1]
            for line in lines
            if line.split()[0] == server and " gap " in line
        ]
        assert gaps == ["0", "200"], done.stdout
        assert any(line.split()[0] == server and "idle:" in line for line in lines), done.stdout
    assert "us/event" in done.stdout and "switches/event" in done.stdout
