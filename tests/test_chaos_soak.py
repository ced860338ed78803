"""The chaos soak, kept short: connections cut through a proxy (often mid-frame) or
frozen silent (held until both ends give up, or thawed late), slow readers, graceful
restarts and kills of a running server, and every acknowledged event stored once in
order, every reader given 1..N once in order, no repeat on the server.

``python -m bench.chaos_soak`` runs hundreds of cycles; here a few, at instants drawn
from a new seed each run (in the failure message), so the instants tried add up over
the suite's runs. Each restart costs a server's start, most of these tests' CPU.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench.chaos_soak import chaos
from tests.redis_server import INSTALL_HINT, available


async def test_cuts_freezes_slow_readers_and_restarts_lose_or_repeat_nothing(
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 32)
    result = await chaos(tmp_path, cycles=4, seed=seed)
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0 and result["cuts"] > 0, (seed, result)
    # The first two cycles freeze a link each, held then thawing; the run waits until
    # both ends of the held one gave it up on their own (the keepalives), else fails.
    assert result["freezes_held"] >= 1 and result["thaws"] >= 1, (seed, result)
    assert result["held_dropped"] == result["freezes_held"], (seed, result)
    # The first two cycles restart gracefully, then kill; /metrics read before each.
    assert result["graceful_restarts"] >= 1 and result["kills"] >= 1, (seed, result)
    assert result["metrics_reads"] >= 2, (seed, result)


async def test_redis_instances_go_through_the_same_faults(tmp_path: Path) -> None:
    if not available():
        pytest.skip(INSTALL_HINT)
    seed = random.randrange(1 << 32)
    # Two servers on one redis-server: a fault takes one down while the other serves.
    result = await chaos(tmp_path, cycles=2, store="redis", instances=2, seed=seed)
    assert result["problems"] == [], (seed, result)
    assert result["acknowledged"] > 0 and result["cuts"] > 0, (seed, result)
    assert result["freezes_held"] >= 1 and result["thaws"] >= 1, (seed, result)
    assert result["graceful_restarts"] >= 1 and result["kills"] >= 1, (seed, result)
