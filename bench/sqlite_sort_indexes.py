"""What the SQLite store's schema version 3 costs: the indexes of the listings by
``updated_at`` and ``message_count`` (persistence/sqlite/schema.py, ``LISTING_INDEXES_V3``).

1. The migration: a store of ``--sessions`` sessions (10 a user, each with a few
   events) is filled through the storage API, taken back to version 2 (its version-3
   indexes dropped, ``user_version`` 2: exactly what version 2 made), and opened for
   writing, which migrates it; timed against a writing open of the same file at
   version 3 (nothing to migrate), best of ``--rounds``, the page cache warm.
2. Appends: ``--events`` appends by ``--appenders`` concurrent appenders over
   ``--append-sessions`` sessions (one in ``--message-every`` a ``message``, the rest
   ``token`` events), on a store with the version-3 indexes and on one without them
   (the same code, the indexes dropped), rounds interleaved; per durability mode, the
   medians of the rate, the process's CPU per append (every thread) and the bytes it
   wrote per append (``/proc/self/io``: the WAL's frames). The bytes are a count the
   neighbours of a shared machine do not move; the ``RATIO`` lines are v3 / v2.
3. The same appends by one appender, one a transaction: SQLite's VM instructions on
   the writer's connection (a progress handler at every one) and bytes written, per
   append; counts, steady where the rate and the CPU of 2 are not.

Run: ``python -m bench.sqlite_sort_indexes [--sessions 100000] [--events 20000]``
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.sqlite.schema import LISTING_INDEXES_V3
from bamboo_session.protocol.models import AgentEvent, AnyAgentEvent, Message, Session

from .common import run
from .storage_bench import bytes_written

SESSIONS_PER_USER = 10
FILL_CHUNK = 500
V3_INDEXES = list(LISTING_INDEXES_V3)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions in 1")
    parser.add_argument("--events", type=int, default=20_000, help="appends per store in 2")
    parser.add_argument("--appenders", type=int, default=64)
    parser.add_argument("--append-sessions", type=int, default=256)
    parser.add_argument("--message-every", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="where to put the stores (default: a temp dir)")
    parser.add_argument("--counted", type=int, default=2000, help="appends in 3")
    parser.add_argument("--skip-migration", action="store_true")
    parser.add_argument(
        "--keep",
        default=",".join(V3_INDEXES),
        help="the version-3 indexes the 'v3 indexes' store of 2 keeps (to weigh fewer)",
    )
    return parser.parse_args()


def to_version_2(path: Path) -> None:
    """Take a version-3 file back to what version 2 made (the documented rollback)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        for name in V3_INDEXES:
            db.execute(f"DROP INDEX {name}")
        db.execute("PRAGMA user_version = 2")
        db.execute("COMMIT")
    finally:
        db.close()


async def fill(url: str, sessions: int, events_each: int) -> None:
    storage = await open_storage(url + "?durability=os", cleanup_interval=None)
    try:
        for first in range(0, sessions, FILL_CHUNK):
            ids = [f"s{i:07d}" for i in range(first, min(first + FILL_CHUNK, sessions))]
            await asyncio.gather(
                *(
                    storage.create_session(
                        Session.new(session_id, user_id=f"u{int(session_id[1:]) // 10}")
                    )
                    for session_id in ids
                )
            )
            for n in range(events_each):
                await asyncio.gather(*(storage.append_event(i, event_of(n, 2)) for i in ids))
    finally:
        await storage.close()


def event_of(n: int, message_every: int) -> AnyAgentEvent:
    if n % message_every == 0:
        return AgentEvent.message(Message.assistant("a message " * 4))
    return AgentEvent.token("tok " * 8)


async def writing_open(url: str) -> float:
    start = time.perf_counter()
    storage = await open_storage(url, cleanup_interval=None)
    elapsed = time.perf_counter() - start
    await storage.close()
    return elapsed


async def bench_migration(root: Path, args: argparse.Namespace) -> None:
    path = root / "many.db"
    url = f"sqlite://{path}"
    start = time.perf_counter()
    await fill(url, args.sessions, 3)
    print(f"1. migration: {args.sessions:,} sessions filled in {time.perf_counter() - start:.1f} s")
    migrations, opens = [], []
    for _ in range(args.rounds):
        opens.append(await writing_open(url))
        to_version_2(path)
        migrations.append(await writing_open(url))
    best_open, best_migration = min(opens), min(migrations)
    print(
        f"   writing open at version 3: {best_open * 1000:,.0f} ms; of version 2, migrated: "
        f"{best_migration * 1000:,.0f} ms (best of {args.rounds}); the migration "
        f"{(best_migration - best_open) * 1000:,.0f} ms"
    )
    db = sqlite3.connect(path)
    sizes = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    db.close()
    indexes = sum(sizes[name] for name in V3_INDEXES)
    print(
        f"   file: {sum(sizes.values()) / 2**20:,.1f} MiB in use, of which the version-3 "
        f"indexes {indexes / 2**20:,.1f} MiB, the sessions table "
        f"{sizes['sessions'] / 2**20:,.1f} MiB"
    )


async def appends(url: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """Appends a second, CPU microseconds and bytes written per append."""
    storage = await open_storage(url, cleanup_interval=None)
    try:
        ids = [f"s{i}" for i in range(args.append_sessions)]
        for number, session_id in enumerate(ids):
            user = f"u{number // SESSIONS_PER_USER}"
            await storage.create_session(Session.new(session_id, user_id=user))
        per_appender = args.events // args.appenders

        async def appender(worker: int) -> None:
            for n in range(per_appender):
                event = event_of(worker + n, args.message_every)
                await storage.append_event(ids[(worker + n * args.appenders) % len(ids)], event)

        written, cpu, start = bytes_written(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(appender(worker) for worker in range(args.appenders)))
        elapsed = time.perf_counter() - start
        cpu, written = time.process_time() - cpu, bytes_written() - written
    finally:
        await storage.close()
    total = per_appender * args.appenders
    return total / elapsed, cpu / total * 1e6, written / total


async def store_without_indexes(path: Path, keep: set[str]) -> None:
    """A version-3 store whose version-3 indexes but ``keep`` are dropped: the code is
    the same."""
    storage = await open_storage(f"sqlite://{path}", cleanup_interval=None)
    await storage.close()
    db = sqlite3.connect(path, isolation_level=None)
    for name in V3_INDEXES:
        if name not in keep:
            db.execute(f"DROP INDEX {name}")
    db.close()


async def bench_appends(root: Path, args: argparse.Namespace) -> None:
    print(
        f"2. appends: {args.events:,} by {args.appenders} appenders over "
        f"{args.append_sessions} sessions, one in {args.message_every} a message "
        f"(medians of {args.rounds} interleaved rounds)"
    )
    found: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for round_ in range(args.rounds):
        for durability in ("fsync", "os"):
            for schema in ("v2 indexes", "v3 indexes"):
                path = root / f"appends-{round_}-{durability}-{schema[:2]}.db"
                keep = set() if schema == "v2 indexes" else set(args.keep.split(","))
                await store_without_indexes(path, keep)
                url = f"sqlite://{path}?durability={durability}"
                found.setdefault((durability, schema), []).append(await appends(url, args))
                path.unlink()
    for durability in ("fsync", "os"):
        medians = {}
        for schema in ("v2 indexes", "v3 indexes"):
            runs = found[durability, schema]
            medians[schema] = [statistics.median(run[i] for run in runs) for i in range(3)]
            rate, cpu, written = medians[schema]
            rates = ", ".join(f"{run[0]:,.0f}" for run in runs)
            print(
                f"   {durability:<5} {schema}: {rate:>7,.0f} appends/s [{rates}]; "
                f"CPU {cpu:.1f} us/append; {written:,.0f} B written/append"
            )
        old, new = medians["v2 indexes"], medians["v3 indexes"]
        for name, i in (("rate", 0), ("cpu_per_append", 1), ("bytes_per_append", 2)):
            print(f"RATIO sqlite appends {durability} {name} v3/v2 = {new[i] / old[i]:.3f}")


async def steps_per_append(url: str, args: argparse.Namespace) -> tuple[float, float, float]:
    """One appender, so one append a transaction: SQLite's VM instructions on the
    writer's connection and bytes written, per append (both counts: the same at every
    run, whatever the neighbours do); and appends a second (slowed by the count)."""
    storage = await open_storage(url, cleanup_interval=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        ids = [f"s{i}" for i in range(args.append_sessions)]
        for number, session_id in enumerate(ids):
            user = f"u{number // SESSIONS_PER_USER}"
            await storage.create_session(Session.new(session_id, user_id=user))
        writer = storage._writer._db  # type: ignore[attr-defined]
        writer.set_progress_handler(count, 1)
        written, start = bytes_written(), time.perf_counter()
        for n in range(args.counted):
            await storage.append_event(ids[n % len(ids)], event_of(n, args.message_every))
        elapsed, written = time.perf_counter() - start, bytes_written() - written
        writer.set_progress_handler(None, 1)
    finally:
        await storage.close()
    return steps / args.counted, written / args.counted, args.counted / elapsed


async def bench_steps(root: Path, args: argparse.Namespace) -> None:
    print(f"3. counts: {args.counted:,} appends by one appender (one a transaction)")
    found = {}
    for durability in ("fsync", "os"):
        for schema in ("v2 indexes", "v3 indexes"):
            path = root / f"steps-{durability}-{schema[:2]}.db"
            keep = set() if schema == "v2 indexes" else set(args.keep.split(","))
            await store_without_indexes(path, keep)
            url = f"sqlite://{path}?durability={durability}"
            found[durability, schema] = steps, written, rate = await steps_per_append(url, args)
            print(
                f"   {durability:<5} {schema}: {steps:,.0f} SQLite VM steps/append; "
                f"{written:,.0f} B written/append; {rate:,.0f} appends/s"
            )
        old, new = found[durability, "v2 indexes"], found[durability, "v3 indexes"]
        print(f"RATIO sqlite append VM steps {durability} v3/v2 = {new[0] / old[0]:.3f}")
        print(f"RATIO sqlite append bytes one-by-one {durability} v3/v2 = {new[1] / old[1]:.3f}")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bamboo-sort-idx-", dir=args.dir) as directory:
        root = Path(directory)
        if not args.skip_migration:
            await bench_migration(root, args)
        await bench_appends(root, args)
        await bench_steps(root, args)


if __name__ == "__main__":
    run(main(parse_args()))
