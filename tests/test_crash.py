"""A kill test under load: SIGKILL a server subprocess at random instants while
publishers and readers work, restart it, and check that every acknowledged event is
stored exactly once, in order, and that readers resumed without gap or duplicate.

The same soak as ``python -m bench.crash_soak`` (50 cycles), kept short here.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.crash_soak import soak


async def test_acknowledged_events_survive_sigkill_exactly_once_in_order(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path / "data", tmp_path / "server.log", cycles=4, seed=seed)
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0
