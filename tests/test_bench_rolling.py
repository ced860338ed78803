"""bench/rolling_upgrade.py at a tiny size, with this tree as both versions (never
asserting speed): its servers start and stop, its peers publish and resume, its checks
pass on a hand-over that loses nothing, and a store marked as of a later format is
refused by this tree in one line with status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_rolling_upgrade_between_one_tree_and_itself(tmp_path: Path) -> None:
    bench = [sys.executable, "-m", "bench.rolling_upgrade", "--old", str(ROOT)]
    tiny = ["--stores", "jsonl", "--stops", "kill", "--events", "30", "--keep", str(tmp_path)]
    done = subprocess.run(
        [*bench, "--only", "store", "wire", *tiny],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True
    (store,) = report["store"]
    assert [step["started"] for step in store["steps"]] == [True] * 4
    assert store["future_format"]["new"]["status"] == 2
    assert "store format 99" in store["future_format"]["new"]["says"]
    assert len(report["wire"]) == 4
    for pair in report["wire"]:
        assert pair["viewer"]["seen"] == 30 and pair["publisher"]["stored"] == 30
        assert pair["publisher"]["reconnects"] == 1
