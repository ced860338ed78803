"""Every bench script runs at a tiny size, so none of them rots. Never asserts speed:
only that each completes and prints its ratio lines (and that the plots draw)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import bytecode_count, latency_variants

ROOT = Path(__file__).resolve().parent.parent

# Throughput and latency with the line-up they had before Socket.IO joined (and their
# RATIO lines as then; throughput with batching agents beside, one run for both tests);
# the full line-up has its own test below. Throughput asks for Socket.IO too, with no
# node on its PATH: the run that skips it in one line is the one before it joined.
# Latency's load is split over two driver processes, their samples merged.
BEFORE_SOCKETIO = ["--peers", "relay", "--durability", "fsync"]
SOCKETIO_SKIPPED = ["--peers", "relay", "socketio", "--durability", "fsync"]
TINY_THROUGHPUT = ["--sessions", "3", "--events", "20"]
TINY_LATENCY = ["--rate", "200", "--sessions", "4", "--seconds", "0.5", "--warmup", "0.2"]
TINY = {
    "throughput": [*TINY_THROUGHPUT, *SOCKETIO_SKIPPED, "--batch"],
    "latency": [*TINY_LATENCY, *BEFORE_SOCKETIO, "--drivers", "2"],
    "connections": ["--connections", "40", "--parked", "200", "--settle", "0.2"],
    "reconnect_storm": ["--sessions", "3", "--viewers", "2", "--events", "40"],
    "missed_storm": ["--sessions", "3", "--viewers", "2", "--events", "10", "--missed", "5"],
    "read_fairness": [
        *("--crowd", "20", "--streams", "4", "--holders", "2", "--messages", "300"),
        *("--seconds", "0.5", "--holders-seconds", "0.5"),
    ],
}
RATIO_LINES = {
    "throughput": 3,
    "latency": 2,
    "connections": 4,
    "reconnect_storm": 4,
    "missed_storm": 2,
    "read_fairness": 3,
}


def run_bench(
    name: str, out: Path, args: list[str] | None = None, env: dict[str, str] | None = None
) -> str:
    env = {k: v for k, v in (env or os.environ).items() if k != "BENCH_FULL"}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *(args or TINY[name]), "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[str, Path]]:
    """``tiny_run(name)``: the stdout and the JSON of ``bench.name`` run at its TINY size,
    once per module (the ratio test and the plots read the same run)."""
    runs: dict[str, tuple[str, Path]] = {}

    def run(name: str) -> tuple[str, Path]:
        if name not in runs:
            out = tmp_path_factory.mktemp(f"bench-{name}") / f"{name}.json"
            env = None
            if name == "throughput":  # no node on it; Python runs by full path
                env = {**os.environ, "PATH": str(tmp_path_factory.mktemp("no-node"))}
            runs[name] = (run_bench(name, out, env=env), out)
        return runs[name]

    return run


@pytest.mark.parametrize("name", sorted(TINY))
def test_script_runs_and_prints_ratios(
    name: str, tiny_run: Callable[[str], tuple[str, Path]]
) -> None:
    stdout, out = tiny_run(name)
    ratios = [
        line for line in stdout.splitlines() if line.startswith(f"RATIO {name.split('_')[0]}")
    ]
    assert len(ratios) == RATIO_LINES[name], stdout
    results = json.loads(out.read_text())
    assert results["nproc"] == os.cpu_count()
    assert results["command"].startswith(f"python -m bench.{name}")


@pytest.mark.parametrize("name", ["throughput", "latency"])
def test_socketio_and_bamboo_os_run_beside_the_relay(name: str, tmp_path: Path) -> None:
    from bench import socketio_peer

    reason = socketio_peer.unavailable()  # installs socket.io with npm ci when missing
    if reason is not None:
        pytest.skip(f"Socket.IO peer: {reason}")
    args = TINY_THROUGHPUT if name == "throughput" else TINY_LATENCY
    out = tmp_path / f"{name}.json"
    stdout = run_bench(name, out, args)
    ratios = [line.split(" = ")[0] for line in stdout.splitlines() if line.startswith("RATIO")]
    for pair in ("bamboo-fsync/socketio", "bamboo-os/relay", "bamboo-os/socketio"):
        assert any(line.endswith(pair) for line in ratios), stdout
    assert any(line.endswith("socketio/relay") for line in ratios), stdout
    results = json.loads(out.read_text())
    if name == "throughput":
        (point,) = results["points"]
        runs = point["runs"]
        assert all(run["events"] == 3 * 20 for run in runs.values())
    else:
        runs = results["runs"]
        for run in runs.values():
            assert (run["drivers"], run["sent"], run["missing"]) == (1, 100, 0), run
    assert list(runs) == ["relay", "socketio", "bamboo-fsync", "bamboo-os"]
    assert all(run["server_cpu_us_per_event"] > 0 for run in runs.values())


def test_throughput_with_batching_agents_beside_single_frames(
    tiny_run: Callable[[str], tuple[str, Path]],
) -> None:
    stdout, out = tiny_run("throughput")
    assert "RATIO throughput sessions=3 bamboo-fsync-batch/bamboo-fsync = " in stdout
    (point,) = json.loads(out.read_text())["points"]
    assert list(point["runs"]) == ["relay", "bamboo-fsync", "bamboo-fsync-batch"]
    assert point["runs"]["bamboo-fsync-batch"]["events"] == 3 * 20  # every one delivered
    assert point["cpu_ratios"]["bamboo-fsync-batch/bamboo-fsync"] > 0


def test_latency_splits_its_load_over_drivers_and_merges_their_samples(
    tiny_run: Callable[[str], tuple[str, Path]],
) -> None:
    runs = json.loads(tiny_run("latency")[1].read_text())["runs"]
    assert list(runs) == ["relay", "bamboo-fsync"]
    for run in runs.values():
        assert (run["drivers"], run["sent"], run["missing"]) == (2, 100, 0), run
        assert run["measured"] == 60  # the 0.2 s of warm-up at 200/s dropped


def test_socketio_peer_is_skipped_in_one_line_without_node(
    tiny_run: Callable[[str], tuple[str, Path]],
) -> None:
    stdout, _ = tiny_run("throughput")  # asked for Socket.IO, with no node on its PATH
    skipped = [line for line in stdout.splitlines() if "skipped" in line]
    reason = "node not found (install Node.js >= 18: apt-get install -y nodejs npm)"
    assert skipped == [f"socketio     skipped: {reason}"], stdout
    # The rest of the line-up ran, and its ratios are printed.
    assert "RATIO throughput sessions=3 = " in stdout
    assert "bamboo-fsync-batch/relay" in stdout


# The scripts, and the worker and driver processes they start by the dozen.
BENCH_PROCESSES = (
    *("baseline_relay", "connections", "latency", "latency_worker", "listener_tries"),
    *("missed_storm", "read_fairness", "reconnect_storm", "redis_scaling", "storm_worker"),
    *("throughput", "workers"),
)
IMPORTED = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(f"bench.{name}")
print(" ".join(sorted(m for m in ("bamboo_session.server.cli", "structlog") if m in sys.modules)))
"""


def test_bench_processes_start_without_the_server_cli() -> None:
    """A bench process imports neither the server's CLI nor its logging: they cost each
    process a third of a second of CPU at its start, for two functions it used."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED, *BENCH_PROCESSES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def test_plots_draw(tiny_run: Callable[[str], tuple[str, Path]], tmp_path: Path) -> None:
    for name in ("throughput", "latency"):
        shutil.copy(tiny_run(name)[1], tmp_path / f"{name}.json")
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


def test_fsync_floor_measures_each_way_to_sync(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.fsync_floor", "--dir", str(tmp_path), "--syncs", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith(("appending", "pre-written", "allocated")) for line in lines) == 6
    assert lines[-2].startswith("RATIO fdatasync CPU pre-written/appending = ")
    assert lines[-1].startswith("RATIO fdatasync CPU allocated/appending = ")
    assert list(tmp_path.iterdir()) == []  # its files are gone


BURN_CPU = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < 0.003:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def test_cpu_of_another_process_is_read_finer_than_a_clock_tick() -> None:
    """A tiny bench run's server uses a few ms of CPU; whole 10 ms ticks read it as 0."""
    from bench import common

    child = subprocess.Popen(
        [sys.executable, "-c", BURN_CPU], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        before = common.cpu_seconds(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        burned = common.cpu_seconds(child.pid) - before
        assert 0.002 < burned < 0.009
    finally:
        child.stdin.close()
        child.wait(timeout=10)


# A finder of bamboo_session put first in sys.meta_path by a sitecustomize (as a
# worktree's shim on PYTHONPATH does): it maps the package to this checkout.
HIJACK = f"""
import sys
from importlib.machinery import PathFinder

class ThisTree:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "bamboo_session" or name.startswith("bamboo_session."):
            return PathFinder.find_spec(name, path or [{str(ROOT)!r}])
        return None

sys.meta_path.insert(0, ThisTree)
"""


def test_the_before_server_is_the_older_trees_whatever_finder_is_first(tmp_path: Path) -> None:
    """BENCH_BEFORE's server runs the older tree's code, even in a process where another
    finder of bamboo_session comes first: with one, ``before`` was this tree's server,
    and the comparison set this tree against itself."""
    from bench import compare

    older = tmp_path / "older"
    for folder in ("bamboo_session", "protocol", "persistence", "server"):
        (older / folder).mkdir(parents=True)
        (older / folder / "__init__.py").write_text("")
    (older / "server" / "__main__.py").write_text("import sys\nprint(__file__, sys.argv[1:])\n")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(HIJACK)
    server = compare.before_server("before", older, tmp_path / "bench")
    done = subprocess.run(
        server.argv,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ran, _, argv = done.stdout.strip().partition(" ")
    assert Path(ran).resolve() == (older / "server" / "__main__.py").resolve()
    assert argv.startswith("['serve', '--host'")


def test_bytecode_count_counts_the_measured_lone_events_by_layer(tmp_path: Path) -> None:
    """The probe of issue 14's lone events: a traced server of this tree and one of an
    "other" checkout (this one again, booted as an older tree is), each counted between
    its two signals; every layer a lone event crosses shows, and the layers add up."""
    out = tmp_path / "bytecodes.json"
    args = ["--sessions", "2", "--events", "10", "--warmup", "4", "--against", str(ROOT)]
    stdout = run_bench("bytecode_count", out, args)
    assert "RATIO bytecodes this/against" in stdout and "RATIO bytecodes event path" in stdout
    assert "server/actor.py:SessionActor.append" in stdout  # among the costliest
    runs = json.loads(out.read_text())["runs"]
    assert sorted(runs) == ["against", "this"]
    for (run,) in runs.values():
        for layer in ("reading", "actor", "outbox", "store", "websockets send"):
            assert run["layers"][layer] > 0, (layer, run)
        assert abs(sum(run["layers"].values()) - run["total"]) < 1e-6 * run["total"]


def test_bytecode_count_serves_the_durability_it_is_asked_for(tmp_path: Path) -> None:
    """``--durability os`` counts the JSONL store acknowledging once written: the traced
    server is started with it (the last ``--durability`` of its command line wins)."""
    assert bytecode_count.parse_args(["--durability", "os"]).durability == "os"
    for durability, store in [("fsync", "fsync"), ("os", "os"), ("memory", "memory://")]:
        argv = bytecode_count.traced_server(None, durability, tmp_path, durability).argv
        flags = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--durability", "--store")]
        assert flags[-1] == store, (durability, argv)


def test_latency_variants_run_each_store_variant_with_its_query_and_environment(
    tmp_path: Path,
) -> None:
    variants = ["--variant", "w1=commit_window=0.001", "--variant", "plain=+BENCH_UNUSED=1"]
    tail = ["--", *TINY_LATENCY, "--peers", "--durability", "fsync", "w1", "plain"]
    stdout = run_bench("latency_variants", tmp_path / "variants.json", [*variants, *tail])
    for kind in ("bamboo-fsync", "bamboo-w1", "bamboo-plain"):
        assert f"| {kind} | " in stdout, stdout
    assert latency_variants.Variant("m=memory+X=1").store_flags(tmp_path) == [
        "--store",
        "memory://",
    ]
    # The query reaches the store's URL, the environment the server: each refused.
    for variant in ("bad=commit_window=9", "bad=+PYTHONHOME=/nonexistent"):
        argv = ["--variant", variant, "--", *TINY_LATENCY, "--peers", "--durability", "bad"]
        out = tmp_path / "bad.json"
        with pytest.raises(
            AssertionError, match=r"exited before listening; see \S*bamboo-bad\.log"
        ):
            run_bench("latency_variants", out, argv)


SLEEP_IN_STEPS = """
import sys, time
print("ready", flush=True)
sys.stdin.readline()
for _ in range(50):
    time.sleep(0.001)
print("done", flush=True)
sys.stdin.readline()
"""


def test_cpu_split_counts_the_times_a_process_slept() -> None:
    """bench/cpu_split.py's wake-ups: each blocking sleep of the loop's thread is one
    more voluntary context switch, read per part beside its CPU time."""
    from bench import cpu_split

    child = subprocess.Popen(
        [sys.executable, "-c", SLEEP_IN_STEPS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        before = cpu_split.split(child.pid)["loop sleeps"][0]
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        slept = cpu_split.split(child.pid)["loop sleeps"][0] - before
        assert 50 <= slept < 60
    finally:
        child.stdin.close()
        child.wait(timeout=10)
