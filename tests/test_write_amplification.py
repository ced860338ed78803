"""bench/write_amplification.py runs end to end in its --tiny size, and the bytes the
store hands to write() per byte appended (our code's doing, unlike the block layer's
page rewrites) stay small in every phase of the history."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_write_amplification_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.write_amplification", "--tiny", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "A. 2,000 messages" in out and "B. 20 messages" in out
    for line in out.splitlines():
        if line.strip().startswith(("worst tenth", "whole run")):
            written = float(re.findall(r"([\d.]+)x", line)[0])  # the write() column
            assert written < 3, line
