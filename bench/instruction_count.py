"""What does one lone event cost the server, counted in machine instructions?

bench/bytecode_count.py counts bytecodes, which C code (uvloop, msgspec, a module
compiled by mypyc) does not run; CPU time drifts by tens of per cent on a loaded
machine. Here the server runs under valgrind's callgrind, its instrumentation off until
the warm-up is done (``callgrind_control -i on``), and the instructions it executes in
user space over ``--events`` lone events (bench/bytecode_count.py's lockstep driver:
each acked and seen by its viewer before the next) are read from a dump. Not counted:
the kernel's work (syscalls, the fsync itself) and other processes (the JSONL store's
sync helper). Valgrind runs the server's threads one at a time, so scheduling does not
change what is counted; the store's timers and threads still move fsync's counts by a
few per cent, memory's by well under one.

Each tree is started as bench/compare.py starts ``before`` (its own package), runs
alternated; printed: instructions per lone event, each run, and the ratio of medians.

    python -m bench.instruction_count /work/wt/base /tmp/h416/tree --durability memory
    python -m bench.instruction_count /work/wt/base /tmp/h416/tree --durability fsync --runs 4
    python -m bench.instruction_count /work/main --runs 1 --cache-sim --keep /tmp/dumps
    python -m bench.instruction_count /work/main --runs 1 --cache-sim=--LL=65536,16,64

With ``--cache-sim`` each run also prints its cache misses per lone event as callgrind
simulates them (I1/D1: first level, LL: last level; ``mr`` read, ``mw`` write misses),
the caches warm: what a lone event overflows of them back to back, not what it pays
after an idle (bench/idle_gap.py). A last level smaller than one event's working set
(64 KiB) misses nearly every line the event touches once, so its misses per event
approach the event's footprint in lines. ``--keep`` keeps the dumps for
``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import common, compare
from .bytecode_count import NO_CLOCK_WORK, lone_event_peers, lone_events

START_TIMEOUT = 600.0  # a server under valgrind starts in tens of seconds on a busy machine


def counted_server(
    tree: Path, durability: str, tmp: Path, label: str, cache_sim: str | None = None
) -> common.ServerProcess:
    """``tree``'s server under callgrind, instrumentation off, its dumps at tmp/label.cg.*;
    with ``cache_sim``, callgrind's simulation of the caches on too, those valgrind
    options added (``--LL=65536,16,64``: a last level of 64 KiB)."""
    store = ["--store", "memory://"] if durability == "memory" else []
    data, log = tmp / f"data-{label}", tmp / f"{label}.log"
    server = common.bamboo_server(data, log, *store, *NO_CLOCK_WORK)
    callgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
    callgrind += ["--cache-sim=yes", *cache_sim.split()] if cache_sim is not None else []
    callgrind.append(f"--callgrind-out-file={tmp / label}.cg")
    package = compare.older_package(tree, tmp / label)
    server.argv[0:3] = [*callgrind, sys.executable, "-c", compare.BEFORE_BOOT, str(package)]
    return server


async def count_once(tree: Path, args: argparse.Namespace, tmp: Path, label: str) -> float:
    """Instructions per lone event of one server of ``tree``."""
    server = counted_server(tree, args.durability, tmp, label, args.cache_sim)
    common.START_TIMEOUT, started = START_TIMEOUT, common.START_TIMEOUT
    try:
        server.start()
    finally:
        common.START_TIMEOUT = started
    try:
        agents, viewers = await lone_event_peers(server.port, f"ic-{label}", args.sessions)
        await lone_events(agents, viewers, 0, args.warmup)
        callgrind_control("-i", "on", server.pid)
        await lone_events(agents, viewers, args.warmup, args.events)
        callgrind_control("-d", server.pid)
        for ws in agents + viewers:
            await ws.close()
    finally:
        server.terminate(60)
    dump = tmp / f"{label}.cg.1"  # the first dump: -d's; the second is the exit's
    per_event = totals(dump, args.events)
    if args.cache_sim is not None:
        print(f"  {label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in per_event.items()))
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, args.keep / f"{tree.name}-{args.durability}-{label}.cg")
    return per_event["Ir"]


def totals(dump: Path, events: int) -> dict[str, float]:
    """Each of ``dump``'s counters (Ir, and with the cache simulation I1mr, D1mr, ...)
    per lone event."""
    text = dump.read_text()
    names = re.search(r"^events: (.+)$", text, re.MULTILINE)
    found = re.search(r"^(?:totals|summary): (.+)$", text, re.MULTILINE)
    if names is None or found is None:
        raise RuntimeError(f"{dump}: no totals")
    return {
        n: int(v) / events
        for n, v in zip(names.group(1).split(), found.group(1).split(), strict=False)
    }


def callgrind_control(*argv: str | int) -> None:
    subprocess.run(["callgrind_control", *map(str, argv)], check=True, capture_output=True)


async def main(args: argparse.Namespace) -> dict[str, list[float]]:
    trees = {str(tree): tree.resolve() for tree in args.trees}
    runs: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bamboo-instructions-") as tmp:
        for run in range(args.runs):
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for index, name in enumerate(order):
                per_event = await count_once(trees[name], args, Path(tmp), f"r{run}t{index}")
                runs[name].append(per_event)
                print(f"{args.durability} run {run} {name}: {per_event:,.0f} per lone event")
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, values in runs.items():
        print(f"{name}: median {medians[name]:,.0f}, runs {', '.join(f'{v:,.0f}' for v in values)}")
    first, *others = list(trees)
    for other in others:
        ratio = medians[other] / medians[first]
        print(f"RATIO instructions per lone event {other} over {first} = {ratio:.3f}")
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", type=Path, help="checkouts; ratios to the first")
    parser.add_argument("--durability", choices=("fsync", "memory"), default="memory")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=100, help="lone events not counted")
    parser.add_argument("--events", type=int, default=400, help="counted lone events")
    parser.add_argument("--runs", type=int, default=2, help="runs of each tree, alternated")
    parser.add_argument(
        "--cache-sim",
        nargs="?",
        const="",
        metavar="VALGRIND_OPTIONS",
        help="simulate the caches: I1/D1/LL misses per event (sizes: '--LL=65536,16,64')",
    )
    parser.add_argument("--keep", type=Path, help="a folder to copy each run's dump into")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("bench.instruction_count: valgrind is not installed: apt-get install valgrind")
    asyncio.run(main(arguments))
