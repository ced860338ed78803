"""Every bench script runs at a tiny size, so none of them rots. Never asserts speed:
only that each completes and prints its ratio lines (and that the plots draw)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = {
    "throughput": ["--sessions", "3", "--events", "20"],
    "latency": ["--rate", "200", "--sessions", "4", "--seconds", "1", "--warmup", "0.2"],
    "connections": ["--connections", "40", "--parked", "200"],
    "reconnect_storm": ["--sessions", "3", "--viewers", "2", "--events", "40"],
}
RATIO_LINES = {"throughput": 1, "latency": 2, "connections": 3, "reconnect_storm": 3}


def run_bench(name: str, out: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "BENCH_FULL"}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *TINY[name], "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("name", sorted(TINY))
def test_script_runs_and_prints_ratios(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    stdout = run_bench(name, out)
    ratios = [
        line for line in stdout.splitlines() if line.startswith(f"RATIO {name.split('_')[0]}")
    ]
    assert len(ratios) == RATIO_LINES[name], stdout
    results = json.loads(out.read_text())
    assert results["nproc"] == os.cpu_count()
    assert results["command"].startswith(f"python -m bench.{name}")


def test_plots_draw(tmp_path: Path) -> None:
    for name in ("throughput", "latency"):
        run_bench(name, tmp_path / f"{name}.json")
    from bench.plot import plot_all

    written = plot_all(tmp_path, tmp_path)
    assert sorted(p.name for p in written) == ["latency.png", "throughput.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_baseline_relay_forwards_frames_unchanged(tmp_path: Path) -> None:
    from bench import common
    from bench.peers import open_ws

    async def scenario(relay: common.ServerProcess) -> list[bytes]:
        sub = await open_ws(relay.url("/sub/x"), subprotocol=False)
        pub = await open_ws(relay.url("/pub/x"), subprotocol=False)
        try:
            import asyncio

            await asyncio.sleep(0.1)
            for frame in (b'{"a":1}', b'{"b":2}'):
                await pub.send(frame, text=True)
            return [await sub.recv(decode=False) for _ in range(2)]
        finally:
            await pub.close()
            await sub.close()

    relay = common.baseline_server(tmp_path / "relay.log").start()
    try:
        assert common.run(scenario(relay)) == [b'{"a":1}', b'{"b":2}']
    finally:
        assert relay.terminate() == 0
