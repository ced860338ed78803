"""Does a long-running server's memory level off? Rounds of realistic churn against a
real server (a subprocess on 127.0.0.1, a free port, a temporary store), and after each
round what the process holds: VmRSS and VmHWM, open descriptors, asyncio tasks and
gc-tracked objects (bench/memory_probe, loaded into the server, answers SIGUSR1), the
store's files (Redis: its keys), and the server's own gauges from /metrics.

A round, per session (``--sessions`` of them, users shared): a publisher creates it and
streams ``--events`` events and messages with idempotency keys (a few sent twice: acked
as duplicates); a viewer replays from 0 and drops its TCP connection; a live viewer
follows the rest; the dropped one resumes, then pages ``history`` and ``events``; HTTP
reads the session, its events and its user's listing; then the session is closed (half),
left parked, or its publisher's TCP is dropped. Sessions expire ``--ttl`` after their
last activity and the server's cleanup removes them (every ``--cleanup-interval``); on
Redis, the ``delete`` tool also deletes some closed ones (the file stores refuse it
while the server holds them). Each round starts by resuming last round's parked ones.

Run: ``python -m bench.memory_plateau --store jsonl [--rounds 20] [--trace]``
(``--store all``: JSONL, SQLite, Redis in turn). ``--trace`` starts tracemalloc in the
server and prints, at the end, the file:line allocations that grew from the round after
warm-up to the last. Bounded: ``--rounds``, and ``--max-seconds`` per store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from . import common
from .memory_churn import MemoryDump, Probe, http_get, run_round
from .redis_scaling import Redis

PROBE_DIR = common.BENCH_DIR / "memory_probe"
GAUGES = (
    "bamboo_live_actors",
    "bamboo_parked_actors",
    "bamboo_sessions_stored",
    "bamboo_buffered_bytes",
    "bamboo_connections",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite", "redis", "all"), default="jsonl")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=48, help="new sessions per round")
    parser.add_argument("--users", type=int, default=12)
    parser.add_argument("--events", type=int, default=120, help="appends per session")
    parser.add_argument("--ttl", type=int, default=5)
    parser.add_argument("--cleanup-interval", type=float, default=2.0)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds after a round")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="per store")
    parser.add_argument("--trace", action="store_true", help="tracemalloc in the server")
    parser.add_argument("--out", type=Path, help="append each round as a JSON line here")
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="ARG",
        help="one more argument for serve (repeat: --server-arg=--max-sessions --server-arg=200)",
    )  # fmt: skip
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((common.HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def server_argv(store_url: str, args: argparse.Namespace) -> list[str]:
    return [
        sys.executable, "-m", "bamboo_session.server", "serve",
        "--host", common.HOST, "--port", "{port}", "--store", store_url,
        "--log-format", "json", "--log-level", "warning",
        "--default-ttl", str(args.ttl), "--cleanup-interval", str(args.cleanup_interval),
        "--session-create-rate", "0", *args.server_arg,
    ]  # fmt: skip


def start_server(argv: list[str], tmp: Path, trace: bool) -> common.ServerProcess:
    """The server, with bench/memory_probe first on its PYTHONPATH."""
    probe_out = tmp / "probe"
    probe_out.mkdir()
    saved = dict(os.environ)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(PROBE_DIR), *filter(None, [saved.get("PYTHONPATH")])]
    )
    os.environ["BAMBOO_PROBE_OUT"] = str(probe_out)
    os.environ["BAMBOO_PROBE_TRACE"] = "1" if trace else "0"
    try:
        return common.ServerProcess("bamboo", argv, tmp / "server.log").start()
    except RuntimeError:
        sys.stderr.write((tmp / "server.log").read_text()[-3000:])
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved)


def proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024  # MiB
    fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return fields


def store_files(directory: Path) -> tuple[int, int]:
    """Files under the store's directory and their bytes."""
    count = size = 0
    for path in directory.rglob("*"):
        if path.is_file():
            count += 1
            size += path.stat().st_size
    return count, size


async def read_gauges(port: int) -> dict[str, float]:
    _, body = await http_get(port, "/metrics")
    gauges = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            gauges[name.removeprefix("bamboo_")] = float(value)
    return gauges


async def redis_keys(port: int) -> int:
    from redis.asyncio import Redis

    client = Redis(host=common.HOST, port=port)
    try:
        keys: int = await client.dbsize()
        return keys
    finally:
        await client.aclose()


async def measure(
    server: common.ServerProcess, probe: Probe, tmp: Path, redis_port: int | None
) -> dict[str, Any]:
    row: dict[str, Any] = proc_status(server.pid)
    dump = await probe.dump()
    row["tasks"] = dump.tasks
    row["gc_objects"] = dump.gc_objects
    if redis_port is None:
        row["files"], row["file_bytes"] = store_files(tmp / "store")
    else:
        row["redis_keys"] = await redis_keys(redis_port)
    row.update(await read_gauges(server.port))
    return row


def print_row(store: str, number: int, row: dict[str, Any]) -> None:
    shown = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())
    print(f"{store} round {number:2d} {shown}", flush=True)


def print_growth(store: str, first: MemoryDump, last: MemoryDump) -> None:
    """What grew between two probe dumps: tasks, object types, traced file:lines."""
    print(f"# {store}: growth from the first measured dump after warm-up to the last")
    for title, before, after in (
        ("tasks", first.tasks_by_coroutine, last.tasks_by_coroutine),
        ("objects", first.objects_by_type, last.objects_by_type),
        ("traced", first.top, last.top),
    ):
        grown = sorted(((after[k] - before.get(k, 0), k) for k in after), reverse=True)
        for delta, key in grown[:15]:
            if delta > 0:
                print(f"  {title} +{delta} {key} (now {after[key]})")


async def run_store(store: str, args: argparse.Namespace) -> None:
    with common.workdir(f"memory-{store}") as tmp:
        (tmp / "store").mkdir()
        if store == "redis":
            redis = Redis(tmp / "store")  # durable, of our own; stopped by its pid
            try:
                await drive(store, f"redis://{common.HOST}:{redis.port}/0", args, tmp, redis.port)
            finally:
                redis.stop()
        else:
            name = "sessions.db" if store == "sqlite" else "sessions"
            await drive(store, f"{store}://{tmp / 'store' / name}", args, tmp, None)


async def drive(
    store: str, url: str, args: argparse.Namespace, tmp: Path, redis_port: int | None
) -> None:
    argv = server_argv(url, args)
    print(f"# {store}: {' '.join(argv)}", flush=True)
    server = start_server(argv, tmp, args.trace)
    probe = Probe(server.pid, tmp / "probe")
    started = time.monotonic()
    dumps: list[MemoryDump] = []
    parked: list[str] = []
    try:
        print_row(store, 0, await measure(server, probe, tmp, redis_port))
        for number in range(1, args.rounds + 1):
            if time.monotonic() - started > args.max_seconds:
                print(f"# {store}: stopped at --max-seconds before round {number}")
                break
            round_started = time.monotonic()
            parked, summary = await run_round(server.port, number, parked, args, url, store)
            churn_seconds = time.monotonic() - round_started
            cpu_before = common.cpu_seconds(server.pid)
            await asyncio.sleep(args.settle)  # no peer: what the server does is its own
            settle_cpu = common.cpu_seconds(server.pid) - cpu_before
            row = await measure(server, probe, tmp, redis_port)
            row["churn_s"] = round(churn_seconds, 1)
            row["settle_cpu_s"] = round(settle_cpu, 3)
            row.update(summary)
            print_row(store, number, row)
            dumps.append(probe.last)
            if args.out:
                with args.out.open("a") as out:
                    out.write(json.dumps({"store": store, "round": number, **row}) + "\n")
        if len(dumps) > 3:
            print_growth(store, dumps[2], dumps[-1])
    finally:
        code = server.terminate()
        print(f"# {store}: server pid {server.pid} stopped, status {code}", flush=True)


async def main() -> None:
    args = parse_args()
    stores = ("jsonl", "sqlite", "redis") if args.store == "all" else (args.store,)
    print(f"# python -m bench.memory_plateau {' '.join(sys.argv[1:])}", flush=True)
    for store in stores:
        await run_store(store, args)


if __name__ == "__main__":
    common.run(main())
