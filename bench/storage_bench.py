"""Storage benchmark: how fast is the JSONL backend where it matters?

It answers three questions, each as a ratio or against a goal, within one run:

1. Append throughput per durability mode (``fsync``, ``os``; and ``MemoryStorage`` as a
   ceiling: the same contract with no file at all), with many
   concurrent appenders over many sessions, against a raw loop that does ``os.write``
   plus a sync (the same ``fdatasync`` the storage uses) of the same lines into the same
   files, one line at a time. Group commit should put ``fsync`` mode well above it.
2. ``list_sessions`` filtered by ``user_id`` over N sessions (goal: under 5 ms).
3. Opening a data directory of N sessions, from the snapshot a clean close leaves and
   by rebuilding from the checkpoints (goal: under 3 s).

Run: ``python -m bench.storage_bench [--sessions 100000] [--events 20000]``;
``--tiny`` runs in a couple of seconds (the test suite uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bamboo_session.persistence import MemoryStorage, SessionFilter, Storage
from bamboo_session.persistence.jsonl import Durability, JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.codec import encode_stored_event
from bamboo_session.protocol.models import AgentEvent, Session, StoredEvent

LIST_GOAL_MS = 5.0
OPEN_GOAL_S = 3.0
SESSIONS_PER_USER = 10

# The same call the writer makes: data and size of an appended file, no timestamps.
datasync = getattr(os, "fdatasync", os.fsync)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions for 2 and 3")
    parser.add_argument("--events", type=int, default=20_000, help="appends per mode in 1")
    parser.add_argument("--appenders", type=int, default=64, help="concurrent appenders in 1")
    parser.add_argument("--append-sessions", type=int, default=256, help="sessions in 1")
    parser.add_argument("--hot-sessions", type=int, default=8, help="few busy sessions in 1")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of 1")
    parser.add_argument("--queries", type=int, default=1000, help="list_sessions calls in 2")
    parser.add_argument("--dir", help="where to put the data (default: a temp dir)")
    parser.add_argument("--tiny", action="store_true", help="a quick run for the tests")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sessions, args.events, args.appenders = 500, 300, 16
        args.append_sessions, args.queries = 16, 50
        args.hot_sessions, args.rounds = 4, 1
    return args


# -- 1. append throughput ------------------------------------------------------------


def sample_lines(count: int) -> list[bytes]:
    """Lines like those the storage writes: a token event of a typical size."""
    now = datetime.now(UTC)
    return [
        encode_stored_event(StoredEvent(i + 1, now, AgentEvent.token("tok " * 8))) + b"\n"
        for i in range(count)
    ]


def raw_loop(directory: Path, sessions: int, lines: list[bytes], sync: bool) -> float:
    """Events per second of write (+ sync) per line, round-robin over the files."""
    directory.mkdir(parents=True)
    fds = [
        os.open(directory / f"s{i}.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for i in range(sessions)
    ]
    try:
        start = time.perf_counter()
        for i, line in enumerate(lines):
            fd = fds[i % sessions]
            os.write(fd, line)
            if sync:
                datasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        for fd in fds:
            os.close(fd)
    return len(lines) / elapsed


async def open_store(directory: Path, durability: Durability | None) -> Storage:
    """A JsonlStorage in that mode, or (None) a MemoryStorage."""
    if durability is None:
        return await MemoryStorage.open()
    return await JsonlStorage.open(JsonlStorageConfig(directory, durability=durability))


async def storage_appends(
    directory: Path, durability: Durability | None, sessions: int, appenders: int, events: int
) -> tuple[float, float]:
    """Events per second through the store, and the mean appends per batch (0: no
    batches, MemoryStorage)."""
    storage = await open_store(directory, durability)
    try:
        ids = [f"s{i}" for i in range(sessions)]
        for session_id in ids:
            await storage.create_session(Session.new(session_id))
        event = AgentEvent.token("tok " * 8)
        per_appender = events // appenders
        writer = storage._writer if isinstance(storage, JsonlStorage) else None
        batches_before = 0 if writer is None else writer.batches

        async def appender(worker: int) -> None:
            for n in range(per_appender):
                await storage.append_event(ids[(worker + n * appenders) % sessions], event)

        start = time.perf_counter()
        await asyncio.gather(*(appender(worker) for worker in range(appenders)))
        elapsed = time.perf_counter() - start
        batches = 0 if writer is None else max(writer.batches - batches_before, 1)
    finally:
        await storage.close()
    total = per_appender * appenders
    return total / elapsed, total / batches if batches else 0.0


async def bench_appends(root: Path, args: argparse.Namespace) -> None:
    """Each measurement ``--rounds`` times, interleaved, so that a noisy neighbour on
    the disk hits all of them alike; the medians are compared."""
    print(
        f"1. appends: {args.events} events, {args.appenders} concurrent appenders over "
        f"{args.append_sessions} sessions (medians of {args.rounds} interleaved rounds)"
    )
    lines = sample_lines(args.events)
    rates: dict[str, list[float]] = {}
    per_batch: dict[str, float] = {}
    modes: list[tuple[str, Durability | None, int]] = [
        ("JsonlStorage fsync", "fsync", args.append_sessions),
        ("JsonlStorage os", "os", args.append_sessions),
        ("MemoryStorage", None, args.append_sessions),
        (f"JsonlStorage fsync, {args.hot_sessions} hot sessions", "fsync", args.hot_sessions),
    ]
    for round_ in range(args.rounds):
        here = root / f"round-{round_}"
        for name, sync in (("raw sync", True), ("raw write", False)):
            rate = raw_loop(here / name.replace(" ", "-"), args.append_sessions, lines, sync)
            rates.setdefault(name, []).append(rate)
        for number, (name, mode, sessions) in enumerate(modes):
            rate, batch = await storage_appends(
                here / f"storage-{number}",
                mode,
                sessions,
                args.appenders,
                args.events,
            )
            rates.setdefault(name, []).append(rate)
            per_batch[name] = batch
    median = {name: statistics.median(values) for name, values in rates.items()}
    raw_sync, raw_write = median["raw sync"], median["raw write"]

    def spread(name: str) -> str:
        values = rates[name]
        return f" [{min(values):,.0f}..{max(values):,.0f}]" if len(values) > 1 else ""

    label = "raw write+fdatasync per line"
    print(f"   {label:<37}{raw_sync:>9,.0f} events/s   1.00x{spread('raw sync')}")
    label = "raw write per line, no sync"
    print(f"   {label:<37}{raw_write:>9,.0f} events/s{spread('raw write')}")
    for name, _mode, _sessions in modes:
        rate = median[name]
        batch = f", {per_batch[name]:.0f} per batch" if per_batch[name] else ""
        print(
            f"   {name:<37}{rate:>9,.0f} events/s  {rate / raw_sync:>5.2f}x raw "
            f"sync, {rate / raw_write:.2f}x raw write{batch}{spread(name)}"
        )


# -- 2 and 3. many sessions --------------------------------------------------------


async def populate(directory: Path, sessions: int) -> None:
    """N sessions, SESSIONS_PER_USER per user, each with one event; created through the
    API in ``os`` mode, 500 at a time (creation is durable in every mode)."""
    config = JsonlStorageConfig(directory, durability="os")
    async with await JsonlStorage.open(config) as storage:
        chunk = 500
        for first in range(0, sessions, chunk):
            ids = range(first, min(first + chunk, sessions))
            await asyncio.gather(
                *(
                    storage.create_session(
                        Session.new(f"s{i:07d}", user_id=f"u{i // SESSIONS_PER_USER}")
                    )
                    for i in ids
                )
            )
            await asyncio.gather(
                *(storage.append_event(f"s{i:07d}", AgentEvent.token("hi")) for i in ids)
            )


async def bench_list(directory: Path, args: argparse.Namespace) -> None:
    async with await JsonlStorage.open(JsonlStorageConfig(directory)) as storage:
        users = max(args.sessions // SESSIONS_PER_USER, 1)
        rng = random.Random(7)
        timings = []
        for _ in range(args.queries):
            query = SessionFilter(user_id=f"u{rng.randrange(users)}")
            start = time.perf_counter()
            result = await storage.list_sessions(query)
            timings.append((time.perf_counter() - start) * 1000)
            assert result.total == SESSIONS_PER_USER or args.sessions < SESSIONS_PER_USER
        start = time.perf_counter()
        await storage.list_sessions(SessionFilter(limit=100))
        unfiltered_ms = (time.perf_counter() - start) * 1000
    timings.sort()
    p50 = statistics.median(timings)
    p99 = timings[min(len(timings) - 1, int(len(timings) * 0.99))]
    verdict = "meets" if p99 < LIST_GOAL_MS else "MISSES"
    print(f"2. list_sessions(user_id=...) over {args.sessions:,} sessions ({args.queries} queries)")
    print(
        f"   p50 {p50:.3f} ms, p99 {p99:.3f} ms: {verdict} the {LIST_GOAL_MS:g} ms goal "
        f"({LIST_GOAL_MS / p99:.0f}x margin at p99)"
    )
    print(f"   for scale, unfiltered newest 100 of all: {unfiltered_ms:.1f} ms")


async def timed_open(directory: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    storage = await JsonlStorage.open(JsonlStorageConfig(directory))
    elapsed = time.perf_counter() - start
    report = storage.recovery
    assert report is not None
    count = (await storage.list_sessions(SessionFilter(limit=1))).total
    await storage.close()
    return elapsed, count, report.from_snapshot


async def bench_open(directory: Path, args: argparse.Namespace) -> None:
    print(f"3. open over {args.sessions:,} sessions")
    with_snapshot, count, from_snapshot = await timed_open(directory)
    assert count == args.sessions and from_snapshot == args.sessions
    (directory / "index" / "snapshot.msgpack").unlink()
    rebuilt, count, from_snapshot = await timed_open(directory)
    assert count == args.sessions and from_snapshot == 0
    for name, seconds in (("from the snapshot", with_snapshot), ("rebuilt", rebuilt)):
        verdict = "meets" if seconds < OPEN_GOAL_S else "MISSES"
        print(
            f"   {name:<18} {seconds:6.2f} s: {verdict} the {OPEN_GOAL_S:g} s goal "
            f"({OPEN_GOAL_S / seconds:.1f}x margin)"
        )


async def run(root: Path, args: argparse.Namespace) -> None:
    await bench_appends(root / "appends", args)
    many = root / "many"
    start = time.perf_counter()
    await populate(many, args.sessions)
    print(f"   (created {args.sessions:,} sessions in {time.perf_counter() - start:.1f} s)")
    await bench_list(many, args)
    await bench_open(many, args)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="bamboo-storage-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"storage bench in {root} (nproc {os.cpu_count()})")
    try:
        asyncio.run(run(root, args))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
