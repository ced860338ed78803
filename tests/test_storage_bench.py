"""bench/storage_bench.py runs end to end in its --tiny size and answers its questions,
for every backend."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_storage_bench_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.storage_bench", "--tiny", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for store in ("jsonl fsync", "sqlite fsync", "jsonl os", "sqlite os", "memory"):
        assert f"   {store} " in out
    assert "sqlite fsync, 4 hot sessions" in out
    assert "RATIO storage appends sqlite/jsonl fsync = " in out
    assert "list_sessions(user_id=...) over 500 sessions" in out
    assert "RATIO storage list p99 sqlite/5ms" in out and "RATIO storage list p99 jsonl/5ms" in out
    assert "jsonl from its snapshot" in out and "jsonl rebuilt" in out
    assert "RATIO storage open sqlite/0.5s" in out
