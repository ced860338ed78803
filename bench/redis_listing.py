"""How long does a listing of sessions hold Redis? (the Redis store's ``list_sessions``)

Redis runs one script at a time: while a listing's script reads its candidates, every
other command of every instance (appends, presence, other listings) waits. This bench
fills a redis-server of its own with N sessions (through the store's ``create_session``,
``--users`` users, one in ten sessions ``idle``), then makes each listing below
``--calls`` times and reads, from ``SLOWLOG`` (every command logged), how long each
script call held Redis: the longest call of a listing is how long it blocked the
others; a listing made in steps makes several calls. Also the listing's wall time.

Listings: by title alone; by title and user; by title and state; by state alone (all
sorted by created_at, the default, newest first), and by title sorted by message count;
then by ``active_after`` (a time taken after the fill, ``--recent`` sessions touched
since), with a title, and sorted by message count: a range of activity times is walked
itself, where it read every session by creation time (300 among 20,000: 81 calls).
Then listings that match every session (``Chat``, each sort and order; by state and by
user sorted by message count; ``active_after`` a time before the fill; a page at offset
half the sessions), whose matches a listing in steps once held whole.

Each listing is also made once more under ``tracemalloc``: "peak" is the most this
process held above what it held before, while it made the listing (its page included).

Run: ``python -m bench.redis_listing [--sessions 10000 100000] [--calls 5] [--recent 300]
[--all] [--only NAME...]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from bamboo_session.persistence import SessionFilter, SortBy, SortOrder, Storage, open_storage
from bamboo_session.protocol.models import Session, SessionState, utcnow

from . import common

REDIS_SERVER = "redis-server"
IN_FLIGHT = 256  # creates at a time while filling


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[int]:
    """A redis-server with no persistence (what is measured is reads), its port."""
    with socket.socket() as probe:
        probe.bind((common.HOST, 0))
        port: int = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port", str(port),
            "--bind", common.HOST,
            "--dir", str(directory),
            "--appendonly", "no",
            "--save", "",
            "--slowlog-log-slower-than", "0",
            "--slowlog-max-len", "100000",
            "--logfile", str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def fill(store: Storage, count: int, users: int) -> float:
    started = time.perf_counter()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def create(i: int) -> None:
        async with gate:
            session = Session.new(f"s{i:07d}", user_id=f"u{i % users}", title=f"Chat {i}")
            await store.create_session(session)
            if i % 10 == 0:
                await store.update_session_state(session.metadata.id, SessionState.IDLE)

    await asyncio.gather(*(create(i) for i in range(count)))
    return time.perf_counter() - started


async def touch_some(store: Storage, count: int, recent: int) -> datetime:
    """Touches ``recent`` sessions spread over the ``count``; the time before."""
    since = utcnow()
    await asyncio.sleep(0.01)  # the touches are later than it, by Redis's clock too
    for i in range(recent):
        await store.touch(f"s{i * (count // recent):07d}")
    return since


def listings(count: int, users: int) -> dict[str, SessionFilter]:
    chosen = count // 2 + 1
    needle = f"Chat {chosen}"  # one session's title, and those it prefixes
    user = f"u{chosen % users}"  # that session's user
    return {
        "title": SessionFilter(title_contains=needle),
        "title+user": SessionFilter(title_contains=needle, user_id=user),
        "title+state": SessionFilter(title_contains=needle, state=SessionState.ACTIVE),
        "state": SessionFilter(state=SessionState.ACTIVE),
        "title by msgs": SessionFilter(title_contains=needle, sort_by=SortBy.MESSAGE_COUNT),
    }


def listings_of_all(count: int, users: int, before: datetime) -> dict[str, SessionFilter]:
    """Listings that every session (or every one of a state or user) matches."""
    by_msgs = SortBy.MESSAGE_COUNT
    chosen: dict[str, SessionFilter] = {}
    for sort_by in SortBy:
        for order in SortOrder:
            name = f"all {sort_by.value.split('_')[0]} {order.value}"
            chosen[name] = SessionFilter(title_contains="Chat", sort_by=sort_by, sort_order=order)
    chosen["all, offset half"] = SessionFilter(title_contains="Chat", offset=count // 2)
    chosen["state by msgs"] = SessionFilter(state=SessionState.ACTIVE, sort_by=by_msgs)
    chosen["user by msgs"] = SessionFilter(user_id=f"u{users // 2}", sort_by=by_msgs)
    chosen["active all"] = SessionFilter(active_after=before, sort_by=by_msgs)
    return chosen


async def peak_bytes(store: Storage, query: SessionFilter) -> int:
    """The most this process held, above what it held before, while it made the
    listing (its page included)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        await store.list_sessions(query)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


async def measure(store: Storage, redis: Any, query: SessionFilter, calls: int) -> dict[str, Any]:
    script_ms: list[float] = []  # the longest script call of each listing
    every_ms: list[float] = []  # every script call of every listing
    steps: list[int] = []
    held_ms: list[float] = []  # the script calls of each listing, added up
    wall_ms: list[float] = []
    total = 0
    for _ in range(calls):
        await redis.execute_command("SLOWLOG", "RESET")
        started = time.perf_counter()
        result = await store.list_sessions(query)
        wall_ms.append((time.perf_counter() - started) * 1000)
        total = result.total
        log = await redis.execute_command("SLOWLOG", "GET", "-1")
        durations = [_micros(entry) for entry in log if _is_script(entry)]
        steps.append(len(durations))
        held_ms.append(sum(durations) / 1000)
        script_ms.append(max(durations) / 1000)
        every_ms += [duration / 1000 for duration in durations]
    peak = await peak_bytes(store, query)
    return {
        "peak_bytes": peak,
        "total": total,
        "script_ms_median": statistics.median(script_ms),
        "script_ms_max": max(script_ms),
        "call_ms_median": statistics.median(every_ms),
        "call_ms_p99": sorted(every_ms)[int(0.99 * (len(every_ms) - 1))],
        "script_calls": statistics.median(steps),
        "held_ms_median": statistics.median(held_ms),
        "wall_ms_median": statistics.median(wall_ms),
    }


def _is_script(entry: Any) -> bool:
    command = entry["command"] if isinstance(entry, dict) else entry[3]
    name = command.split()[0] if isinstance(command, bytes | str) else command[0]
    name = name.decode() if isinstance(name, bytes) else name
    return name.upper() in ("EVALSHA", "EVAL")


def _micros(entry: Any) -> int:
    return int(entry["duration"] if isinstance(entry, dict) else entry[2])


async def run(args: argparse.Namespace) -> None:
    from redis.asyncio import Redis

    print(f"# python -m bench.redis_listing {' '.join(sys.argv[1:])}")
    for count in args.sessions:
        with common.workdir("redis-listing") as tmp, redis_server(tmp) as port:
            # What is measured is reads: a Redis that keeps nothing is accepted.
            url = f"redis://{common.HOST}:{port}/0?prefix=listing&accept_lossy=true"
            redis = Redis(host=common.HOST, port=port)
            for _ in range(200):
                with contextlib.suppress(OSError, ConnectionError, Exception):
                    await redis.ping()
                    break
                await asyncio.sleep(0.05)
            store = await open_storage(url)
            try:
                before_fill = utcnow()
                seconds = await fill(store, count, args.users)
                print(f"{count:,} sessions, {args.users} users: filled in {seconds:.1f} s")
                chosen = listings(count, args.users)
                if args.recent:
                    since = await touch_some(store, count, args.recent)
                    by_msgs, title = SortBy.MESSAGE_COUNT, "Chat"
                    chosen["active+title"] = SessionFilter(active_after=since, title_contains=title)
                    chosen["active by msgs"] = SessionFilter(active_after=since, sort_by=by_msgs)
                if args.all:
                    chosen |= listings_of_all(count, args.users, before_fill)
                if args.only:
                    chosen = {name: chosen[name] for name in args.only}
                for name, query in chosen.items():
                    figures = await measure(store, redis, query, args.calls)
                    print(
                        f"  {name:14} total {figures['total']:>7,}  longest script call "
                        f"median {figures['script_ms_median']:8.2f} ms, max "
                        f"{figures['script_ms_max']:8.2f} ms; {figures['script_calls']:>4g} "
                        f"calls of {figures['call_ms_median']:.2f} ms (median), "
                        f"{figures['call_ms_p99']:.2f} ms (p99), "
                        f"{figures['held_ms_median']:.1f} ms in all (median); "
                        f"listing {figures['wall_ms_median']:8.1f} ms (median); "
                        f"peak {figures['peak_bytes'] / 2**20:7.2f} MiB"
                    )
            finally:
                await store.close()
                await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--recent", type=int, default=300, help="sessions touched (0: none)")
    parser.add_argument("--all", action="store_true", help="add the listings that match all")
    parser.add_argument("--only", nargs="+", help="make only the listings of these names")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
