"""Bamboo on Redis, one and two worker processes, beside the embedded JSONL store: what
sharing the store costs, and what a second process buys.

In one invocation, one server at a time, each durable (JSONL with ``fsync``; Redis with
``appendonly yes``, ``appendfsync always``, the store's tests' setting):

- ``jsonl``: ``serve --durability fsync``;
- ``redis-1``: ``serve --store redis://...`` (one process);
- ``redis-2``: ``serve --store redis://... --workers 2`` (two processes on one port;
  an agent and its viewer often land on different workers, and the events cross
  through Redis pub/sub).

Each runs the throughput question (bench/throughput.py: P sessions, one agent
publishing N events with a window of unacknowledged requests, one viewer checking
order) and the latency question (bench/latency.py: an open loop at a fixed rate, one
sample per event). Beside the rates, from /proc: the CPU of the Bamboo processes
(supervisor and workers) and of redis-server per event, and from Redis's INFO: its
round trips per event (``total_reads_processed``: socket reads, so a pipeline counts
once) and the commands it ran per event (``commandstats``, which in Redis 7 also counts
the commands a script runs; the scripts themselves are the ``evalsha`` line).

    python -m bench.redis_scaling                  # P in 20, 100; 2,000 events/s, 5 s
    BENCH_FULL=1 python -m bench.redis_scaling     # P in 100, 500; 5,000 events/s, 20 s
    python -m bench.redis_scaling --sessions 3 --events 20 --rate 200 --seconds 1   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common, compare, latency, throughput
from .workers import DriverGroup

KINDS = ("jsonl", "redis-1", "redis-2")
RATIOS = (("redis-1", "jsonl"), ("redis-2", "jsonl"), ("redis-2", "redis-1"))
WARMUP_EVENTS = 5_000
REDIS_SERVER = os.environ.get("BAMBOO_REDIS_SERVER") or shutil.which("redis-server") or ""


# -- redis-server ---------------------------------------------------------------------------


class Redis:
    """A redis-server of this invocation, with the counters the bench reads."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as probe:
            probe.bind((common.HOST, 0))
            self.port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", common.HOST,
                "--dir", str(directory),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--logfile", str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.info("server")
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def url(self, prefix: str) -> str:
        return f"redis://{common.HOST}:{self.port}/0?prefix={prefix}"

    def info(self, section: str) -> dict[str, str]:
        """``INFO section`` as fields (one bulk-string reply: ``$<length>\r\n<text>``)."""
        with socket.create_connection((common.HOST, self.port), timeout=5) as conn:
            conn.sendall(f"INFO {section}\r\n".encode())
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    raise OSError("redis closed the connection")
                data += chunk
                header, sep, body = data.partition(b"\r\n")
                if sep and len(body) >= int(header[1:]):
                    break
        fields: dict[str, str] = {}
        for line in body.decode().splitlines():
            name, colon, value = line.partition(":")
            if colon and not name.startswith("#"):
                fields[name] = value
        return fields

    def counters(self) -> dict[str, float]:
        """Socket reads, and commands by name (script-run ones included)."""
        counts: dict[str, float] = {"reads": float(self.info("stats")["total_reads_processed"])}
        for name, value in self.info("commandstats").items():
            calls = value.split(",", 1)[0].removeprefix("calls=")
            counts[name.removeprefix("cmdstat_")] = float(calls)
        return counts

    def stop(self) -> None:
        """SIGTERM by its pid, again and again: Redis refuses one while it writes its
        first AOF; SIGKILL past 10 s."""
        deadline = time.monotonic() + 10
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- servers ---------------------------------------------------------------------------------


def server_for(kind: str, tmp: Path, redis: Redis | None) -> common.ServerProcess:
    if kind == "jsonl":
        return common.bamboo_server(tmp / "data-jsonl", tmp / "jsonl.log")
    assert redis is not None
    workers = kind.removeprefix("redis-")
    store = redis.url(f"bench{workers}-{time.monotonic_ns()}")
    return common.bamboo_server(
        tmp / f"data-{kind}", tmp / f"{kind}.log", "--store", store, "--workers", workers
    )


def bamboo_pids(server: common.ServerProcess) -> list[int]:
    """The server's process and its workers (the children of a supervisor)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    with contextlib.suppress(OSError):
        return [server.pid, *(int(pid) for pid in children.read_text().split())]
    return [server.pid]


class Meter:
    """CPU of the Bamboo processes and of redis-server, and Redis's counters, over one
    measurement."""

    def __init__(
        self,
        server: common.ServerProcess,
        redis: Redis | None,
        kind: str,
        driver_pids: list[int] | None = None,
    ) -> None:
        self.pids = bamboo_pids(server)
        self.redis = redis if kind.startswith("redis") else None
        self.driver_pids = driver_pids or []  # driver processes, beside this one

    def __enter__(self) -> Meter:
        self.bamboo_before = sum(common.cpu_seconds(pid) for pid in self.pids)
        self.redis_before = common.cpu_seconds(self.redis.proc.pid) if self.redis else 0.0
        self.counters_before = self.redis.counters() if self.redis else {}
        self.driver_before = self._driver_cpu()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bamboo_cpu = sum(common.cpu_seconds(pid) for pid in self.pids) - self.bamboo_before
        self.wall = time.perf_counter() - self.started
        self.driver_cpu = self._driver_cpu() - self.driver_before
        self.redis_cpu = 0.0
        self.counts: dict[str, float] = {}
        if self.redis is not None:
            self.redis_cpu = common.cpu_seconds(self.redis.proc.pid) - self.redis_before
            after = self.redis.counters()
            for name, value in after.items():
                delta = value - self.counters_before.get(name, 0.0)
                if delta and name != "info":
                    self.counts[name] = delta
            self.counts["reads"] -= 2  # the INFO calls of the first counters()

    def _driver_cpu(self) -> float:
        return time.process_time() + sum(common.cpu_seconds(pid) for pid in self.driver_pids)

    def per_event(self, events: int) -> dict[str, Any]:
        commands = {k: v / events for k, v in self.counts.items() if k != "reads"}
        return {
            # Shares of one core over the measurement (connecting and closing included,
            # as in the CPU per event): 2.0 would be the whole machine.
            "bamboo_cpu_share": self.bamboo_cpu / self.wall,
            "redis_cpu_share": self.redis_cpu / self.wall,
            "driver_cpu_share": self.driver_cpu / self.wall,
            "bamboo_cpu_us_per_event": 1e6 * self.bamboo_cpu / events,
            "redis_cpu_us_per_event": 1e6 * self.redis_cpu / events,
            "redis_round_trips_per_event": self.counts.get("reads", 0.0) / events,
            "redis_commands_per_event": sum(commands.values()),
            "redis_commands_by_name": dict(sorted(commands.items(), key=lambda kv: -kv[1])),
            "driver_cpu_s": self.driver_cpu,
        }


# -- the two questions ---------------------------------------------------------------------


async def measure_throughput(
    kind: str, server: common.ServerProcess, redis: Redis | None, sessions: int, args: Any
) -> dict[str, Any]:
    total = sessions * args.events
    with Meter(server, redis, kind) as meter:
        elapsed = await throughput.measure_bamboo(server, sessions, args.events, args.window)
    result = {
        "kind": kind,
        "sessions": sessions,
        "events": total,
        "events_per_s": total / elapsed,
        **meter.per_event(total),
    }
    print(
        f"throughput {kind:8s} sessions={sessions:5d} {result['events_per_s']:9.0f} events/s  "
        f"CPU us/event: bamboo {result['bamboo_cpu_us_per_event']:6.1f} "
        f"redis {result['redis_cpu_us_per_event']:6.1f}  redis round trips/event "
        f"{result['redis_round_trips_per_event']:.2f}, commands/event "
        f"{result['redis_commands_per_event']:.1f}; CPU of a core: {shares(result)}",
        flush=True,
    )
    return result


def shares(result: dict[str, Any]) -> str:
    """Bamboo / redis-server / driver, in percent of one core."""
    parts = ("bamboo_cpu_share", "redis_cpu_share", "driver_cpu_share")
    return " / ".join(f"{100 * result[part]:.0f}%" for part in parts)


async def measure_latency(
    kind: str, server: common.ServerProcess, redis: Redis | None, args: Any, tmp: Path
) -> dict[str, Any]:
    names = [f"lat-{time.monotonic_ns()}-{i}" for i in range(args.latency_sessions)]
    url = f"ws://{common.HOST}:{server.port}"
    drivers = latency.drivers_for("bamboo-" + kind, url, names, latency_args(args), tmp)
    async with DriverGroup(drivers) as group:
        await group.ready()
        with Meter(server, redis, kind, [d.pid for d in drivers]) as meter:
            group.go()
            async with asyncio.timeout(args.seconds + latency.RESULT_TIMEOUT_EXTRA):
                results = await group.results()
    samples = latency.read_samples([Path(d.config["samples_path"]) for d in drivers])
    lat_args = latency_args(args)
    summary = latency.summarize(kind, lat_args, results, sorted(samples), meter.bamboo_cpu)
    sent = max(summary["sent"], 1)
    summary.pop("histogram_ms")
    summary.update(meter.per_event(sent))
    print(
        f"  CPU: bamboo {summary['bamboo_cpu_share']:.0%} "
        f"({summary['bamboo_cpu_us_per_event']:.1f} us/event), redis "
        f"{summary['redis_cpu_share']:.0%} ({summary['redis_cpu_us_per_event']:.1f} us/event)",
        flush=True,
    )
    return summary


def latency_args(args: Any) -> argparse.Namespace:
    return argparse.Namespace(
        rate=args.rate,
        sessions=args.latency_sessions,
        seconds=args.seconds,
        warmup=args.warmup,
        drivers=args.drivers,
        codec="json",
    )


# -- the invocation --------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(tmp: Path, lineup: list[str]) -> Iterator[Redis | None]:
    if not any(kind.startswith("redis") for kind in lineup):
        yield None
        return
    directory = tmp / "redis"
    directory.mkdir()
    redis = Redis(directory)
    try:
        yield redis
    finally:
        redis.stop()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    runs: dict[str, dict[str, Any]] = {}
    with common.workdir("redis-scaling") as tmp, redis_server(tmp, args.kinds) as redis:
        for kind in args.kinds:
            server = server_for(kind, tmp, redis).start()
            try:
                await asyncio.sleep(0.5)  # every worker listening
                warm = min(max(args.sessions), math.ceil(WARMUP_EVENTS / args.events))
                await throughput.measure_bamboo(server, warm, args.events, args.window)
                runs[kind] = {
                    "throughput": [
                        await measure_throughput(kind, server, redis, sessions, args)
                        for sessions in args.sessions
                    ],
                    "latency": await measure_latency(kind, server, redis, args, tmp),
                }
            finally:
                server.terminate()
    report(runs, args)
    return {"question": "redis_scaling", "nproc": os.cpu_count(), "runs": runs}


def report(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    pairs = [(a, b) for a, b in RATIOS if a in runs and b in runs]
    for index, sessions in enumerate(args.sessions):
        rate = {kind: run["throughput"][index]["events_per_s"] for kind, run in runs.items()}
        for a, b in pairs:
            name = f"throughput sessions={sessions} {a}/{b}"
            print(common.ratio_line("redis_scaling", name, rate[a] / rate[b], "-"))
    p99 = {kind: run["latency"]["p99_ms"] for kind, run in runs.items()}
    for a, b in pairs:
        print(common.ratio_line("redis_scaling", f"latency p99 {a}/{b}", p99[a] / p99[b], "-"))
    rows = []
    for kind, run in runs.items():
        for point in run["throughput"]:
            rows.append(row(kind, f"throughput, {point['sessions']} sessions", point, "-"))
        lat = run["latency"]
        rows.append(row(kind, f"latency, {lat['rate']:,.0f}/s", lat, f"{lat['p99_ms']:.2f}"))
    header = [
        "store",
        "question",
        "events/s",
        "p99 ms",
        "Bamboo CPU us/event",
        "redis CPU us/event",
        "redis round trips/event",
        "redis commands/event",
        "CPU: Bamboo / redis / driver (% of a core)",
    ]
    print(compare.markdown_table(header, rows), flush=True)


def row(kind: str, question: str, result: dict[str, Any], p99: str) -> list[str]:
    rate = result.get("events_per_s") or result.get("achieved_rate", 0.0)
    return [
        kind,
        question,
        f"{rate:,.0f}",
        p99,
        f"{result['bamboo_cpu_us_per_event']:.1f}",
        f"{result['redis_cpu_us_per_event']:.1f}",
        f"{result['redis_round_trips_per_event']:.2f}",
        f"{result['redis_commands_per_event']:.1f}",
        shares(result),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument(
        "--sessions", type=int, nargs="+", default=[100, 500] if full else [20, 100]
    )
    parser.add_argument("--events", type=int, default=200, help="events per session")
    parser.add_argument("--window", type=int, default=32, help="unacked requests per agent")
    parser.add_argument("--rate", type=float, default=5_000 if full else 2_000)
    parser.add_argument("--latency-sessions", type=int, default=500 if full else 200)
    parser.add_argument("--seconds", type=float, default=20 if full else 5)
    parser.add_argument("--warmup", type=float, default=2 if full else 1)
    parser.add_argument("--drivers", type=int, default=0, help="latency driver processes")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.drivers <= 0:
        args.drivers = max(1, math.ceil(args.rate / latency.RATE_PER_DRIVER))
    if any(kind.startswith("redis") for kind in args.kinds) and not REDIS_SERVER:
        parser.error("redis-server not found: apt-get install -y redis-server")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
    sys.exit(0)
