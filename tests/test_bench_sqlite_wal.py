"""bench/sqlite_wal_bound.py at a tiny size: it runs a real store under each bound it
compares, and the WAL it reports stays within that bound (a batch's pages over it at
most), which shows the bound it sets is the one the store ran with. Never asserts
speed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def test_each_bound_runs_and_holds_its_wal(tmp_path: Path) -> None:
    out = tmp_path / "wal.json"
    argv = [sys.executable, "-m", "bench.sqlite_wal_bound", "--tiny", "--json", str(out)]
    argv += ["--dir", str(tmp_path / "stores")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    ratios = [line for line in done.stdout.splitlines() if line.startswith("RATIO sqlite_wal")]
    assert len(ratios) == 2, done.stdout
    results = json.loads(out.read_text())
    assert results["nproc"] == os.cpu_count()
    assert sorted(results["runs"]) == ["1", "4"]
    for bound, runs in results["runs"].items():
        (run,) = runs
        assert run["events_per_s"] > 0
        assert 0 < run["wal_peak_bytes"] <= int(bound) * MIB + MIB, (bound, run)
    assert list((tmp_path / "stores").iterdir()) == []  # each store removed after its run
