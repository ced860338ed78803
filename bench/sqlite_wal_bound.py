"""The SQLite store's WAL bound (``WAL_MAX_BYTES`` in persistence/sqlite/schema.py):
what a smaller WAL costs in appends per second and in the slowest append, and what a
larger one costs on a full disk (about the WAL's size must be freed before the store
takes writes again: docs/storage-sqlite.md).

Each run opens a real store in a temp dir with one bound, ``--writers`` coroutines
each appending ``--events`` events of ``--bytes`` to a session of its own, one append
at a time (the writer's group commit batches them), and reads: events per second, the
appends' p50, p99 and slowest latency, and the WAL file's largest size (sampled every
2 ms by a thread). Bounds run in turn, ``--rounds`` times over, so that the neighbours
of a shared machine weigh on each alike; the median round is printed, and one
``RATIO`` line per bound: its rate against the first bound's.

Run: ``python -m bench.sqlite_wal_bound [--bounds 4,16,64] [--writers 8] [--events
4000] [--bytes 2000] [--durability os] [--rounds 3]``; ``--tiny`` runs in seconds (the
tests use it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig, schema
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import Session

from . import common

MIB = 1 << 20
SAMPLE_EVERY = 0.002  # seconds between two reads of the WAL's size


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bounds", default="4,16,64", help="WAL bounds to compare, MiB")
    parser.add_argument("--writers", type=int, default=8, help="concurrent appenders")
    parser.add_argument("--events", type=int, default=4000, help="appends of each writer")
    parser.add_argument("--bytes", type=int, default=2000, help="content of each event")
    parser.add_argument("--durability", default="os", choices=["os", "fsync"])
    parser.add_argument("--rounds", type=int, default=3, help="runs of every bound")
    parser.add_argument("--dir", type=Path, help="where to put the stores (default: /tmp)")
    parser.add_argument("--tiny", action="store_true", help="a quick run for the tests")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.tiny:
        args.bounds, args.writers, args.events, args.rounds = "1,4", 4, 200, 1
    args.bounds = [int(mib) for mib in args.bounds.split(",")]
    return args


@dataclass
class Run:
    bound_mib: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    slowest_ms: float
    wal_peak_bytes: int


class WalSizes:
    """The largest size the WAL file reached, read by a thread of its own."""

    def __init__(self, wal: Path) -> None:
        self._wal = wal
        self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WalSizes:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_EVERY):
            with suppress(FileNotFoundError):  # before the first write, after the close
                self.peak = max(self.peak, self._wal.stat().st_size)


async def writer(storage: SqliteStorage, name: str, count: int, content: str) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        await storage.append_event(name, AgentEvent.token(f"{n} {content}"))
        latencies.append(time.perf_counter() - started)
    return latencies


async def run_one(base: Path, bound_mib: int, args: argparse.Namespace) -> Run:
    # Read at each open: the bound under test, for this store only.
    schema.WAL_MAX_BYTES = bound_mib * MIB
    path = base / f"wal-{bound_mib}.db"
    config = SqliteStorageConfig(path, durability=args.durability, cleanup_interval=None)
    content = "x" * args.bytes
    async with await SqliteStorage.open(config) as storage:
        names = [f"w{index}" for index in range(args.writers)]
        for name in names:
            await storage.create_session(Session.new(name))
        with WalSizes(path.with_name(path.name + "-wal")) as wal:
            started = time.perf_counter()
            per_writer = await asyncio.gather(
                *(writer(storage, name, args.events, content) for name in names)
            )
            elapsed = time.perf_counter() - started
    await asyncio.to_thread(remove_store, base, path.name)
    latencies = sorted(latency for one in per_writer for latency in one)
    return Run(
        bound_mib,
        len(latencies) / elapsed,
        common.percentile(latencies, 0.50) * 1000,
        common.percentile(latencies, 0.99) * 1000,
        latencies[-1] * 1000,
        wal.peak,
    )


def remove_store(base: Path, name: str) -> None:
    for leftover in base.glob(f"{name}*"):
        leftover.unlink()


def median_run(runs: list[Run]) -> Run:
    """The round of median rate, as it was (its latencies with it)."""
    ordered = sorted(runs, key=lambda run: run.events_per_s)
    return ordered[(len(ordered) - 1) // 2]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    runs: dict[int, list[Run]] = {bound: [] for bound in args.bounds}
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    place = common.workdir("sqlite-wal") if args.dir is None else nullcontext(args.dir)
    with place as base:
        for round_number in range(args.rounds):
            # A different bound first in each round: none always runs on a cold cache.
            shift = round_number % len(args.bounds)
            for bound in args.bounds[shift:] + args.bounds[:shift]:
                run = await run_one(base, bound, args)
                runs[bound].append(run)
                print(
                    f"round {round_number + 1} {bound:>3} MiB: {run.events_per_s:>8,.0f} ev/s"
                    f"  p99 {run.p99_ms:6.1f} ms  slowest {run.slowest_ms:6.1f} ms"
                    f"  WAL peak {run.wal_peak_bytes / MIB:5.1f} MiB",
                    flush=True,
                )
    print(
        f"{args.writers} writers x {args.events} events of {args.bytes} B, "
        f"durability={args.durability}, median of {args.rounds} round(s):"
    )
    print(f"   {'bound':>7}{'ev/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'slowest':>10}{'WAL peak':>11}")
    medians = {bound: median_run(bound_runs) for bound, bound_runs in runs.items()}
    for bound, run in medians.items():
        print(
            f"   {bound:>3} MiB{run.events_per_s:>10,.0f}{run.p50_ms:>9.2f}{run.p99_ms:>9.1f}"
            f"{run.slowest_ms:>10.1f}{run.wal_peak_bytes / MIB:>7.1f} MiB"
        )
    first = args.bounds[0]
    for bound, run in medians.items():
        rate = run.events_per_s / medians[first].events_per_s
        print(common.ratio_line(f"sqlite_wal {bound}MiB/{first}MiB", "events_per_s", rate, "-"))
    return {"runs": {str(bound): [asdict(run) for run in rs] for bound, rs in runs.items()}}


def cli() -> None:
    args = parse_args()
    print(f"sqlite_wal_bound: nproc {os.cpu_count()}", flush=True)
    results = common.run(main(args))
    common.write_json(args.json, results)


if __name__ == "__main__":
    cli()
