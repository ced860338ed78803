"""What the SQLite store's open pays for its clock's start (``clock_start.newest_times``,
persistence/clock.py): the newest ``updated_at`` of every session, one pass over the
table (it has no index), against the query before r357, which read it of the
``active`` and ``idle`` sessions only, through the state's index and a lookup per row.

It fills a temporary store of ``--sessions`` sessions through the storage API, then
sets the share ``--attached`` of them ``active`` (what a killed server leaves) and the
rest ``disconnected`` with one statement (setup, not measured), and times each query
on the store's own file, best of ``--rounds``, the page cache warm.

Run: ``python -m bench.sqlite_newest_times [--sessions 100000] [--attached 1.0,0.01]``
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.sqlite.clock_start import newest_times
from bamboo_session.protocol.models import Session

FILL_BATCH = 1000
BEFORE = (  # reads.newest_times before r357
    "SELECT (SELECT max(last_activity_at) FROM sessions), "
    "(SELECT max(created_at) FROM sessions), "
    "(SELECT max(updated_at) FROM sessions WHERE state IN ('active', 'idle'))"
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--attached", default="1.0,0.01", help="shares stored active")
    parser.add_argument("--rounds", type=int, default=5)
    return parser.parse_args()


async def fill(path: Path, sessions: int) -> None:
    storage = await open_storage(f"sqlite://{path}?durability=os", cleanup_interval=None)
    try:
        for start in range(0, sessions, FILL_BATCH):
            made = range(start, min(start + FILL_BATCH, sessions))
            await asyncio.gather(
                *(storage.create_session(Session.new(f"s{n}", "u", ttl=3600)) for n in made)
            )
    finally:
        await storage.close()


def best_of(rounds: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bamboo-newest-") as directory:
        path = Path(directory) / "sessions.db"
        asyncio.run(fill(path, args.sessions))
        db = sqlite3.connect(path)
        for share in (float(text) for text in args.attached.split(",")):
            attached = int(args.sessions * share)
            db.execute("UPDATE sessions SET state = 'disconnected'")
            db.execute(
                "UPDATE sessions SET state = 'active' WHERE id IN "
                "(SELECT id FROM sessions ORDER BY id LIMIT ?)",
                (attached,),
            )
            db.commit()
            before = best_of(args.rounds, lambda: db.execute(BEFORE).fetchone())
            after = best_of(args.rounds, lambda: newest_times(db))
            print(
                f"{args.sessions:,} sessions, {attached:,} active: before {before * 1000:.1f} ms,"
                f" now {after * 1000:.1f} ms"
            )
            ratio = after / before
            print(f"RATIO sqlite newest_times now/before, {share:.0%} active = {ratio:.3f}")
        db.close()


if __name__ == "__main__":
    main()
