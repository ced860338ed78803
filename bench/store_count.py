"""What counting the stored sessions costs the event loop of an in-memory index (the
JSONL and memory stores keep one): ``list_sessions(limit=1)``, as the near-full
warning's count (server/store_stats.py, every 30 s without a scrape, and at each
scrape) and the per-user caps counted, against ``limit=0``, a count alone, which
orders nothing.

The listing runs on the loop's thread: its time is how long every connection of the
server waits. Timed as that thread's CPU time (``time.thread_time``: on a shared
machine, wall time counts the neighbours' turns too); both in the same invocation, on
the same index; the ``RATIO`` lines are the figures to compare.

    nice .venv/bin/python -m bench.store_count --sessions 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from bamboo_session.persistence import SessionFilter, Storage, open_storage
from bamboo_session.protocol import Session


async def timed(store: Storage, query: SessionFilter, rounds: int) -> tuple[float, int]:
    """The median CPU seconds of ``rounds`` listings, and the total they found."""
    seconds, total = [], 0
    for _ in range(rounds):
        started = time.thread_time()
        found = await store.list_sessions(query)
        seconds.append(time.thread_time() - started)
        total = found.total
    return statistics.median(seconds), total


async def main(args: argparse.Namespace) -> None:
    store = await open_storage("memory://")
    try:
        for i in range(args.sessions):
            await store.create_session(Session.new(f"s{i}", user_id=f"u{i % args.users}"))
        user = "u0"
        rows = []
        for name, limit in (("limit=1", 1), ("limit=0", 0)):
            every, total = await timed(store, SessionFilter(limit=limit), args.rounds)
            mine, own = await timed(store, SessionFilter(user_id=user, limit=limit), args.rounds)
            rows.append((name, every, mine))
            print(
                f"{name}: every session {every * 1000:.2f} ms (total {total}), "
                f"one user's {mine * 1000:.3f} ms (total {own})"
            )
        (_, before, before_user), (_, after, after_user) = rows
        print(f"RATIO store_count every session limit0/limit1 = {after / before:.5f}")
        print(f"RATIO store_count one user limit0/limit1 = {after_user / before_user:.4f}")
    finally:
        await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20, help="sessions spread over them")
    parser.add_argument("--rounds", type=int, default=9)
    asyncio.run(main(parser.parse_args()))
