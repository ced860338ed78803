"""The bench scripts on Redis run at a tiny size (never asserting speed):
bench/redis_scaling.py (JSONL, Redis with one worker and with two, each through
throughput and latency, with the CPU split and Redis's round trips per event) and
bench/listener_tries.py (hellos while the store's pub/sub listener cannot connect)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.redis_server import INSTALL_HINT, available
from tests.test_bench import run_bench


def test_redis_scaling_runs_and_prints_ratios(tmp_path: Path) -> None:
    if not available():
        pytest.skip(INSTALL_HINT)
    out = tmp_path / "redis_scaling.json"
    args = ["--sessions", "3", "--events", "20", "--rate", "200", "--seconds", "0.5"]
    args += ["--warmup", "0.2", "--latency-sessions", "4"]
    stdout = run_bench("redis_scaling", out, args)
    ratios = [line for line in stdout.splitlines() if line.startswith("RATIO redis_scaling")]
    # Throughput and latency: redis-1 and redis-2 against jsonl, redis-2 against redis-1.
    assert len(ratios) == 6, stdout
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m bench.redis_scaling")
    assert list(results["runs"]) == ["jsonl", "redis-1", "redis-2"]
    for kind in ("redis-1", "redis-2"):
        point = results["runs"][kind]["throughput"][0]
        assert point["events"] == 60
        assert point["redis_round_trips_per_event"] > 0 and point["bamboo_cpu_us_per_event"] > 0
        assert "evalsha" in point["redis_commands_by_name"]


def test_listener_tries_runs_and_prints_ratios(tmp_path: Path) -> None:
    """bench/listener_tries.py at a tiny size: hellos welcomed while Redis takes
    connections, closed 1011 while it refuses them (at ``maxclients``), and the tries
    of the store's listener counted as the connections Redis refused."""
    if not available():
        pytest.skip(INSTALL_HINT)
    out = tmp_path / "listener_tries.json"
    args = ["--rate", "40", "--seconds", "0.5", "--sessions", "5"]
    stdout = run_bench("listener_tries", out, args)
    ratios = [line for line in stdout.splitlines() if line.startswith("RATIO listener_tries")]
    assert len(ratios) == 4, stdout
    results = json.loads(out.read_text())
    assert results["command"].startswith("python -m bench.listener_tries")
    runs = results["runs"]
    assert list(runs) == ["up", "down", "idle"]
    assert runs["up"]["outcomes"] == {"welcome": 20} and runs["up"]["connections_refused"] == 0
    assert runs["down"]["outcomes"] == {"1011": 20} and runs["down"]["connections_refused"] > 0
    assert results["cpu_s_per_try"] > 0
