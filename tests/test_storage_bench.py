"""bench/storage_bench.py runs end to end in its --tiny size and answers its questions."""

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
    for mode in ("JsonlStorage fsync ", "JsonlStorage os ", "MemoryStorage ", "4 hot sessions"):
        assert mode in out
    assert "x raw sync" in out
    assert "list_sessions(user_id=...) over 500 sessions" in out
    assert "from the snapshot" in out and "rebuilt" in out
