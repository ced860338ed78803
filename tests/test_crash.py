"""A kill test under load: SIGKILL a server subprocess at random instants while
publishers and readers work, restart it, and check that every acknowledged event is
stored exactly once, in order, and that readers resumed without gap or duplicate.

The same soak as ``python -m bench.crash_soak`` (on JSONL 50 cycles, and 20 that cross
WAL segment retirement; ``--store sqlite`` and ``--store redis`` likewise; ``--store
redis --instances 3``, several servers on one store), kept short here: two kills a
test (four across WAL retirement), the second on a server that recovered from the
first's crash, at instants drawn from a new seed each run (in the failure message), so
the instants tried add up over the suite's runs; the soak's own runs take 20 to 50.
Each kill costs a server's start, most of these tests' CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.crash_soak import soak
from tests.redis_server import INSTALL_HINT, available


async def test_acknowledged_events_survive_sigkill_exactly_once_in_order(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=2, seed=seed)
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0


async def test_kills_across_wal_segment_retirement_lose_nothing(tmp_path: Path) -> None:
    # Segments retired every 0.2 s and cycles of 0.4 to 1 s: kills land before, during
    # and after retirements (their logs synced, then the segment deleted). No kill
    # before them: those are the first test's.
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=0, seed=seed, wal_cycles=4)
    assert result["problems"] == [], (seed, result)
    assert result["wal_segments_retired"] >= 2, (seed, result)


async def test_sqlite_store_keeps_acknowledged_events_through_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=2, seed=seed, store="sqlite")
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0


async def test_redis_store_keeps_acknowledged_events_through_sigkill(tmp_path: Path) -> None:
    # Only the Bamboo server is killed; its redis-server (appendfsync always) stays up.
    if not available():
        pytest.skip(INSTALL_HINT)
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=2, seed=seed, store="redis")
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0


async def test_redis_instances_keep_acknowledged_events_when_one_dies(tmp_path: Path) -> None:
    # Two servers on one redis-server; clients reconnect to either at random, so
    # resends and resumes land on the other one while the killed one restarts.
    if not available():
        pytest.skip(INSTALL_HINT)
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=2, seed=seed, store="redis", instances=2)
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0
    assert result["kills"] == 2
    # The killed instance's watchers are gone, the other's still count.
    assert result["watchers_attached_after_last_kill"] == {"soak-a": 1, "soak-b": 1}


async def test_jsonl_durability_os_keeps_acknowledged_events_through_sigkill(
    tmp_path: Path,
) -> None:
    # Acknowledged once written, not synced (no WAL: the store syncs the logs written
    # in the background): a SIGKILL ends the process, not the page cache, so nothing
    # acknowledged may be lost here either.
    seed = random.randrange(1 << 32)
    result = await soak(tmp_path, cycles=2, seed=seed, durability="os")
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0
    # Every start ran at os, as each one said.
    assert result["stores_started"]
    assert all(store.endswith("?durability=os") for store in result["stores_started"]), result
