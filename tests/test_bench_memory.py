"""bench/memory_plateau.py at a tiny size: a real server through two rounds of churn,
each round's figures read from the server process (its probe answering SIGUSR1)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^jsonl round +(\d+) (.*)$")


def rows(stdout: str) -> dict[int, dict[str, str]]:
    found = {}
    for line in stdout.splitlines():
        match = ROW.match(line)
        if match:
            found[int(match.group(1))] = dict(f.split("=", 1) for f in match.group(2).split())
    return found


def test_two_rounds_of_churn_are_measured_and_the_server_stopped(tmp_path: Path) -> None:
    out = tmp_path / "rounds.jsonl"
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.memory_plateau", "--store", "jsonl",
            "--rounds", "2", "--sessions", "4", "--users", "2", "--events", "20",
            "--ttl", "1", "--cleanup-interval", "0.5", "--settle", "2.5", "--trace",
            "--out", str(out),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    measured = rows(done.stdout)
    assert sorted(measured) == [0, 1, 2], done.stdout
    for number in (1, 2):
        row = measured[number]
        assert row["failed"] == "0" and row["gaps"] == "0", done.stdout + done.stderr
        assert int(row["VmRSS"]) > 0 and int(row["fds"]) > 0
        assert int(row["tasks"]) > 0  # the probe in the server answered
    # Every publisher sends its last 8 appends again: all acked as duplicates (round 2
    # also visits the one session round 1 parked).
    assert measured[1]["duplicates"] == str(4 * 8)
    assert measured[2]["duplicates"] == str(5 * 8)
    assert len(out.read_text().splitlines()) == 2
    assert re.search(r"# jsonl: server pid \d+ stopped, status 0", done.stdout)
