"""Storage benchmark: how fast is each backend where it matters, against the others?

Every backend is opened by its URL (``jsonl://``, ``sqlite://``, ``memory://``) and
measured in the same invocation, so the figures compare as ratios:

1. Append throughput, many concurrent appenders over many sessions, per backend and
   durability mode, against a raw loop that does ``os.write`` plus ``fdatasync`` of the
   same lines into as many files, one line at a time. Goal: SQLite's durable appends at
   least 0.8x JSONL's (``RATIO`` line). With each: the process's CPU per event (all
   threads) and the bytes it wrote per event (``/proc/self/io``), which the neighbours
   of a shared machine disturb less than the rate.
2. ``list_sessions`` filtered by ``user_id`` over N sessions, per backend (goal: p99
   under 5 ms).
3. Opening a store of N sessions: JSONL from its snapshot and rebuilt from its
   checkpoints (goal 3 s), SQLite (goal 0.5 s: nothing is rebuilt).
4. Closing a JSONL store (``fsync``, the WAL) that holds ``--close-sessions`` logs
   open, each with one unsynced append: its close syncs every one. ``--close-only``
   runs only this (``--rounds`` times), to compare two trees run alternately.

Run: ``python -m bench.storage_bench [--sessions 100000] [--events 20000]``;
``--tiny`` runs in seconds (the test suite uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bamboo_session.persistence import SessionFilter, Storage, open_storage
from bamboo_session.persistence.jsonl.files import datasync
from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import AgentEvent, Session, StoredEvent

LIST_GOAL_MS = 5.0
OPEN_GOALS_S = {"jsonl": 3.0, "sqlite": 0.5}
SQLITE_VS_JSONL_GOAL = 0.8
SESSIONS_PER_USER = 10


@dataclasses.dataclass(frozen=True)
class Store:
    name: str  # as printed
    kind: str  # jsonl, sqlite, memory
    query: str = ""  # URL options

    def url(self, directory: Path) -> str:
        if self.kind == "memory":
            return "memory://"
        path = directory / ("store.db" if self.kind == "sqlite" else "store")
        return f"{self.kind}://{path}{self.query}"


APPEND_STORES = [
    Store("jsonl fsync", "jsonl"),
    Store("sqlite fsync", "sqlite"),
    Store("jsonl os", "jsonl", "?durability=os"),
    Store("sqlite os", "sqlite", "?durability=os"),
    Store("memory", "memory"),
]
MANY_STORES = [Store("jsonl", "jsonl"), Store("sqlite", "sqlite")]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions for 2 and 3")
    parser.add_argument("--events", type=int, default=20_000, help="appends per store in 1")
    parser.add_argument("--appenders", type=int, default=64, help="concurrent appenders in 1")
    parser.add_argument("--append-sessions", type=int, default=256, help="sessions in 1")
    parser.add_argument("--hot-sessions", type=int, default=8, help="few busy sessions in 1")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of 1")
    parser.add_argument("--queries", type=int, default=1000, help="list_sessions calls in 2")
    parser.add_argument("--dir", help="where to put the data (default: a temp dir)")
    parser.add_argument(
        "--many-dir",
        help="where to put the stores of 2 and 3 (default: in --dir); JSONL syncs every "
        "create, so 100,000 take about 15 minutes on a disk and 40 s on a tmpfs",
    )
    parser.add_argument("--close-sessions", type=int, default=1000, help="open logs in 4")
    parser.add_argument("--close-only", action="store_true", help="run only 4")
    parser.add_argument("--tiny", action="store_true", help="a quick run for the tests")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sessions, args.events, args.appenders = 500, 300, 16
        args.append_sessions, args.queries = 16, 50
        args.hot_sessions, args.rounds, args.close_sessions = 4, 1, 50
    return args


# -- 1. append throughput ------------------------------------------------------------


def sample_lines(count: int) -> list[bytes]:
    """Lines like those JSONL writes: a token event of a typical size."""
    now = datetime.now(UTC)
    return [
        encode_stored_event(StoredEvent(i + 1, now, AgentEvent.token("tok " * 8))) + b"\n"
        for i in range(count)
    ]


def raw_loop(directory: Path, sessions: int, lines: list[bytes]) -> float:
    """Events per second of write + fdatasync per line, round-robin over the files."""
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
            datasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        for fd in fds:
            os.close(fd)
    return len(lines) / elapsed


@dataclasses.dataclass
class Appends:
    rate: float  # events per second
    cpu_us: float  # CPU of the whole process (every thread) per event, microseconds
    written: float  # bytes written to storage per event (/proc/self/io write_bytes)


def bytes_written() -> int:
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(": ") for line in f.read().splitlines())
    except OSError:  # not Linux
        return 0
    return int(fields["write_bytes"])


async def store_appends(url: str, sessions: int, appenders: int, events: int) -> Appends:
    """Events per second through the store, each append acknowledged; CPU and bytes
    written per event."""
    storage = await open_storage(url, cleanup_interval=None)
    try:
        ids = [f"s{i}" for i in range(sessions)]
        for session_id in ids:
            await storage.create_session(Session.new(session_id))
        event = AgentEvent.token("tok " * 8)
        per_appender = events // appenders

        async def appender(worker: int) -> None:
            for n in range(per_appender):
                await storage.append_event(ids[(worker + n * appenders) % sessions], event)

        written, cpu = bytes_written(), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(appender(worker) for worker in range(appenders)))
        elapsed = time.perf_counter() - start
        cpu, written = time.process_time() - cpu, bytes_written() - written
    finally:
        await storage.close()
    total = per_appender * appenders
    return Appends(total / elapsed, cpu / total * 1e6, written / total)


async def bench_appends(root: Path, args: argparse.Namespace) -> None:
    """Each measurement ``--rounds`` times, interleaved, so that a noisy neighbour on
    the disk hits all of them alike; the medians are compared."""
    print(
        f"1. appends: {args.events} events, {args.appenders} concurrent appenders over "
        f"{args.append_sessions} sessions (medians of {args.rounds} interleaved rounds)"
    )
    lines = sample_lines(args.events)
    cases = [(store.name, store, args.append_sessions) for store in APPEND_STORES]
    cases += [
        (f"{store.name}, {args.hot_sessions} hot sessions", store, args.hot_sessions)
        for store in APPEND_STORES[:2]
    ]
    rates: dict[str, list[float]] = {}
    costs: dict[str, list[tuple[float, float]]] = {}
    for round_ in range(args.rounds):
        here = root / f"round-{round_}"
        rate = raw_loop(here / "raw", args.append_sessions, lines)
        rates.setdefault("raw", []).append(rate)
        for number, (name, store, sessions) in enumerate(cases):
            url = store.url(here / f"store-{number}")
            done = await store_appends(url, sessions, args.appenders, args.events)
            rates.setdefault(name, []).append(done.rate)
            costs.setdefault(name, []).append((done.cpu_us, done.written))
    median = {name: statistics.median(values) for name, values in rates.items()}

    def spread(name: str) -> str:
        values = rates[name]
        return f" [{min(values):,.0f}..{max(values):,.0f}]" if len(values) > 1 else ""

    raw = median["raw"]
    label = "raw write+fdatasync per line"
    print(f"   {label:<32}{raw:>9,.0f} events/s   1.00x{spread('raw')}")
    for name, _store, _sessions in cases:
        rate = median[name]
        cpu = statistics.median(c for c, _ in costs[name])
        written = statistics.median(w for _, w in costs[name])
        print(
            f"   {name:<32}{rate:>9,.0f} events/s  {rate / raw:>5.2f}x raw sync{spread(name)}; "
            f"CPU {cpu:.1f} us/event, {written:,.0f} B written/event"
        )
    for suffix in ("fsync", "os", f"fsync, {args.hot_sessions} hot sessions"):
        ratio = median[f"sqlite {suffix}"] / median[f"jsonl {suffix}"]
        goal = f" (goal >= {SQLITE_VS_JSONL_GOAL})" if suffix == "fsync" else ""
        print(f"RATIO storage appends sqlite/jsonl {suffix} = {ratio:.3f}{goal}")


# -- 2 and 3. many sessions --------------------------------------------------------


async def populate(url: str, sessions: int) -> None:
    """N sessions, SESSIONS_PER_USER per user, each with one event; through the API in
    ``os`` durability, many at a time, so that 100,000 take seconds, not minutes."""
    storage = await open_storage(url, cleanup_interval=None)
    try:
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
    finally:
        await storage.close()


async def bench_list(name: str, storage: Storage, args: argparse.Namespace) -> None:
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
    print(
        f"   {name:<7} p50 {p50:.3f} ms, p99 {p99:.3f} ms: {verdict} the {LIST_GOAL_MS:g} ms "
        f"goal; unfiltered newest 100 of all: {unfiltered_ms:.1f} ms"
    )
    print(
        f"RATIO storage list p99 {name}/{LIST_GOAL_MS:g}ms = {p99 / LIST_GOAL_MS:.4f} (goal <= 1.0)"
    )


async def timed_open(url: str) -> tuple[float, float, Storage]:
    """Seconds to open, seconds to the first answer of a listing, and the store."""
    start = time.perf_counter()
    storage = await open_storage(url, cleanup_interval=None)
    opened = time.perf_counter() - start
    await storage.list_sessions(SessionFilter(limit=1))
    return opened, time.perf_counter() - start, storage


async def bench_many(root: Path, args: argparse.Namespace) -> None:
    urls = {}
    for store in MANY_STORES:
        url = urls[store.kind] = store.url(root / store.kind)
        start = time.perf_counter()
        await populate(f"{url}?durability=os", args.sessions)
        took = time.perf_counter() - start
        print(f"   (created {args.sessions:,} {store.kind} sessions in {took:.1f} s)")
    print(f"2. list_sessions(user_id=...) over {args.sessions:,} sessions ({args.queries} queries)")
    opens: dict[str, tuple[float, float]] = {}
    for store in MANY_STORES:
        opened, answered, storage = await timed_open(urls[store.kind])
        opens[store.kind] = (opened, answered)
        try:
            await bench_list(store.kind, storage, args)
        finally:
            await storage.close()
    print(f"3. open over {args.sessions:,} sessions (to open; to the first listing)")
    snapshot = root / "jsonl" / "store" / "index" / "snapshot.msgpack"
    if snapshot.exists():
        snapshot.unlink()
        opened, answered, storage = await timed_open(urls["jsonl"])
        await storage.close()
        rows = [
            ("jsonl from its snapshot", "jsonl", *opens["jsonl"]),
            ("jsonl rebuilt", "jsonl", opened, answered),
        ]
    else:
        rows = [("jsonl", "jsonl", *opens["jsonl"])]
    rows.append(("sqlite", "sqlite", *opens["sqlite"]))
    for label, kind, opened, answered in rows:
        goal = OPEN_GOALS_S[kind]
        verdict = "meets" if answered < goal else "MISSES"
        print(
            f"   {label:<24} {opened:6.3f} s; {answered:6.3f} s: {verdict} the {goal:g} s goal "
            f"({goal / answered:.1f}x margin)"
        )
    goal = OPEN_GOALS_S["sqlite"]
    print(f"RATIO storage open sqlite/{goal:g}s = {opens['sqlite'][1] / goal:.3f} (goal <= 1.0)")
    print(f"RATIO storage open sqlite/jsonl = {opens['sqlite'][1] / opens['jsonl'][1]:.3f}")


# -- 4. close ------------------------------------------------------------------------


async def timed_close(directory: Path, sessions: int) -> float:
    """Seconds the store's close takes with ``sessions`` logs open, each holding one
    append the WAL covers but no sync of its own yet."""
    url = f"jsonl://{directory}?max_open_logs={sessions}"
    storage = await open_storage(url, cleanup_interval=None)
    try:
        ids = [f"c{i:06d}" for i in range(sessions)]
        await asyncio.gather(*(storage.create_session(Session.new(i, user_id="u")) for i in ids))
        await asyncio.gather(*(storage.append_event(i, AgentEvent.token("hi")) for i in ids))
    except BaseException:
        await storage.close()
        raise
    started = time.perf_counter()
    await storage.close()
    return time.perf_counter() - started


async def bench_close(root: Path, args: argparse.Namespace) -> None:
    print(f"4. close of a JSONL store with {args.close_sessions} open logs")
    took = []
    for run in range(args.rounds):
        directory = root / f"close{run}"
        took.append(await timed_close(directory, args.close_sessions))
        shutil.rmtree(directory, ignore_errors=True)
    listed = " ".join(f"{t:.3f}" for t in took)
    print(f"   close: median {statistics.median(took):.3f} s over {len(took)} runs ({listed})")


async def run(root: Path, args: argparse.Namespace) -> None:
    if args.close_only:
        await bench_close(root, args)
        return
    await bench_appends(root / "appends", args)
    many = Path(args.many_dir) if args.many_dir else root / "many"
    try:
        await bench_many(many, args)
    finally:
        if args.many_dir:
            shutil.rmtree(many, ignore_errors=True)
    await bench_close(root, args)


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
