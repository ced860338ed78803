"""bench/sqlite_sort_indexes.py at a tiny size: the migration it times is a real one
(the file comes back to version 3 with its indexes), and the appends it compares run on
stores with and without the version-3 indexes: an append on the one with them runs
more SQLite instructions. Never asserts speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_it_migrates_and_weighs_the_indexes(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.sqlite_sort_indexes", "--sessions", "300"]
    argv += ["--events", "64", "--appenders", "4", "--append-sessions", "8"]
    argv += ["--rounds", "1", "--counted", "40", "--dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"the version-3 indexes \d", out), out
    steps = dict(re.findall(r"(fsync v\d) indexes: ([\d,]+) SQLite VM steps/append", out))
    assert int(steps["fsync v3"].replace(",", "")) > int(steps["fsync v2"].replace(",", ""))
    assert len([line for line in out.splitlines() if line.startswith("RATIO")]) == 10
    assert list(tmp_path.iterdir()) == []  # its stores removed
