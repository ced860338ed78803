"""The loop time of each step of a store's park (``ParksAttached.park_attached``, a
batch of ``BATCH`` sessions) with ``--sessions`` sessions stored ``active``: what a
park that does not yield between its steps (the graceful stop's before h368) holds
the loop for, step by step. The first step also takes the ids of every attached
session (persistence/parking.py).

The store is filled once (in a process of its own, as bench/restart_park.py does) into
``--keep`` if given and empty, and copied for each run, so that runs of two trees
start from the same files.

Run: ``python -m bench.park_steps [--store jsonl|sqlite] [--sessions 100000] [--steps 5]
[--keep DIR] [--runs 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.capabilities import ParksAttached
from bamboo_session.server.restart_park import BATCH
from bench.restart_park import fill_in_child, store_url


async def steps_of_one_park(url: str, steps: int) -> list[float]:
    storage = await open_storage(url, default_ttl=3600)
    try:
        assert isinstance(storage, ParksAttached)
        taken = []
        park = storage.park_attached(storage.now(), BATCH)
        for _ in range(steps):
            started = time.perf_counter()
            await anext(park)
            taken.append(time.perf_counter() - started)
        return taken  # (the steps not taken are the close's to drop)
    finally:
        await storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite"), default="jsonl")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="the filled store, kept for other runs")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        filled = args.keep or Path(scratch) / "filled"
        filled.mkdir(parents=True, exist_ok=True)
        if not any(filled.iterdir()):
            fill_in_child(store_url(args.store, filled), args.sessions)
        for run in range(args.runs):
            copy = Path(scratch) / f"run{run}"
            shutil.copytree(filled, copy)
            taken = asyncio.run(steps_of_one_park(store_url(args.store, copy), args.steps))
            shutil.rmtree(copy)
            shown = ", ".join(f"{seconds * 1000:.1f}" for seconds in taken)
            print(
                f"{args.store}, {args.sessions} attached, run {run + 1}: steps of {BATCH}: "
                f"{shown} ms of the loop each"
            )


if __name__ == "__main__":
    main()
