"""Question 1, durable throughput: how many events a second does Bamboo deliver, with
``fsync`` durability, when P agents publish and P viewers watch?

P sessions; in each, one agent publishes N token events, pipelined with at most
``--window`` unacknowledged requests (as a real agent does), and one viewer receives
them, checking order and gaps. The figure is events delivered to viewers per second,
from the first publish to the last delivery. In the same invocation, at each P:
- the relay (bench/baseline_relay.py): P producers, N frames each, one subscriber each,
  forwarded without decoding, no acks, no storage;
- Socket.IO (bench/socketio/, in-memory connection state recovery): one room per
  session, the agent emits each event with an acknowledgement callback, at most
  ``--window`` unacknowledged, the viewer in the room checks the seq of the broadcast
  (driven by a Node socket.io-client process, bench/socketio/driver.js);
- Bamboo at each ``--durability`` (fsync and os: the price of the disk); a durability
  with ``-batch`` (``fsync-batch``, or ``--batch`` for each) is that server again, whose
  agents send whatever their window has room for as one ``batch`` frame per write.
Goal: Bamboo (fsync) >= 0.6x the relay (stretch 0.8x).

Also reported: server CPU microseconds per event (from /proc/PID/stat; less sensitive
to a noisy neighbour than wall time), and the driver's own CPU, since driver and server
share the machine's cores.

    python -m bench.throughput                  # P in 20, 100; N = 200
    BENCH_FULL=1 python -m bench.throughput     # P in 100, 250, 500, 1000; N = 200
    python -m bench.throughput --sessions 3 --events 20   # a smoke run
    python -m bench.throughput --peers relay --durability fsync   # the pre-Socket.IO line-up
    python -m bench.throughput --sessions 100 1000 --events 1000 --durability fsync fsync-batch
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common, compare, socketio_peer
from .peers import bamboo_attach, open_ws, publish_unacked, publish_windowed, receive_events
from .workers import DriverProcess

RUN_TIMEOUT = 300.0  # no single measurement may take longer than this
CONNECT_CONCURRENCY = 50
WARMUP_EVENTS = 20_000


async def measure_baseline(server: common.ServerProcess, sessions: int, events: int) -> float:
    names = [f"tp{sessions}-{i}" for i in range(sessions)]
    viewers = await common.gather_bounded(
        [open_ws(server.url(f"/sub/{n}"), subprotocol=False) for n in names], CONNECT_CONCURRENCY
    )
    agents = await common.gather_bounded(
        [open_ws(server.url(f"/pub/{n}"), subprotocol=False) for n in names], CONNECT_CONCURRENCY
    )
    await asyncio.sleep(0.2)  # let the relay register every subscriber
    try:
        start = time.perf_counter()
        receiving = [
            asyncio.ensure_future(receive_events(v, events, numbered="id")) for v in viewers
        ]
        await asyncio.gather(*(publish_unacked(a, events) for a in agents), *receiving)
        return time.perf_counter() - start
    finally:
        await asyncio.gather(*(ws.close() for ws in [*agents, *viewers]), return_exceptions=True)


async def measure_bamboo(
    server: common.ServerProcess, sessions: int, events: int, window: int, batch: bool = False
) -> float:
    base = f"ws://{common.HOST}:{server.port}"
    ids = [f"tp{sessions}-{i}-{time.monotonic_ns()}" for i in range(sessions)]
    attached = await common.gather_bounded(
        [bamboo_attach(base, sid, role="agent", create=True) for sid in ids], CONNECT_CONCURRENCY
    )
    agents = [ws for ws, _ in attached]
    viewers_attached = await common.gather_bounded(
        [bamboo_attach(base, sid) for sid in ids], CONNECT_CONCURRENCY
    )
    viewers = [ws for ws, _ in viewers_attached]
    try:
        start = time.perf_counter()
        receiving = [
            asyncio.ensure_future(receive_events(v, events, numbered="seq")) for v in viewers
        ]
        publishing = (publish_windowed(a, events, window, batch) for a in agents)
        await asyncio.gather(*publishing, *receiving)
        return time.perf_counter() - start
    finally:
        await asyncio.gather(*(ws.close() for ws in [*agents, *viewers]), return_exceptions=True)


class SocketIODriver:
    """One Node driver process for the whole invocation, fed one run after another, so
    its JIT stays warm as the in-process Python driver does (a fresh Node driver ran at
    a third of the speed it reached by its fourth run)."""

    def __init__(self) -> None:
        self.process: DriverProcess | None = None

    async def run(
        self, server: common.ServerProcess, sessions: int, events: int, window: int
    ) -> tuple[float, float]:
        """(seconds, driver CPU seconds): the driver times the run and counts its CPU."""
        config = {
            "mode": "throughput",
            "url": socketio_peer.url(server),
            "sessions": [f"tp{sessions}-{i}-{time.monotonic_ns()}" for i in range(sessions)],
            "events": events,
            "window": window,
        }
        if self.process is None:
            self.process = socketio_peer.driver("socketio", config)
            await self.process.start()
        else:
            self.process.submit(config)
        await self.process.ready()
        self.process.go(time.perf_counter())
        result = await self.process.result()
        return result["seconds"], result["driver_cpu_s"]

    async def close(self) -> None:
        if self.process is not None:
            await self.process.stop(grace=10.0)


class Servers:
    """This invocation's servers, one per kind, and the Socket.IO driver, started on
    entry and stopped on exit."""

    def __init__(self, lineup: list[str], tmp: Path) -> None:
        self.lineup = lineup
        self.tmp = tmp
        self.by_kind: dict[str, common.ServerProcess] = {}
        self.socketio_driver = SocketIODriver()

    async def __aenter__(self) -> Servers:
        try:
            for kind in self.lineup:
                self.by_kind[kind] = compare.server(kind, self.tmp).start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.socketio_driver.close()
        for server in self.by_kind.values():
            server.terminate()

    async def run_once(
        self, kind: str, sessions: int, events: int, window: int
    ) -> tuple[float, float]:
        """(seconds, driver CPU seconds) of one run of ``kind``."""
        server = self.by_kind[kind]
        driver_before = time.process_time()
        async with asyncio.timeout(RUN_TIMEOUT):
            if kind == compare.SOCKETIO:  # a Node process, which counts its own CPU
                return await self.socketio_driver.run(server, sessions, events, window)
            if kind == compare.RELAY:
                elapsed = await measure_baseline(server, sessions, events)
            else:
                batch = compare.batches(kind)
                elapsed = await measure_bamboo(server, sessions, events, window, batch)
        return elapsed, time.process_time() - driver_before


async def measure(
    servers: Servers, kind: str, sessions: int, events: int, window: int
) -> dict[str, Any]:
    server = servers.by_kind[kind]
    cpu_before = common.cpu_seconds(server.pid)
    elapsed, driver_cpu = await servers.run_once(kind, sessions, events, window)
    total = sessions * events
    # CPU is counted over connect + run + close: the same overheads for every kind.
    server_cpu = common.cpu_seconds(server.pid) - cpu_before
    result = {
        "kind": kind,
        "sessions": sessions,
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "server_cpu_us_per_event": 1e6 * server_cpu / total,
        "driver_cpu_s": driver_cpu,
    }
    print(
        f"{kind:18s} sessions={sessions:5d} events={total:7d} "
        f"{result['events_per_s']:9.0f} events/s  server CPU "
        f"{result['server_cpu_us_per_event']:6.1f} us/event  driver CPU {driver_cpu:.1f} s",
        flush=True,
    )
    return result


def report_point(sessions: int, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The RATIO lines of one session count; the point as stored in the JSON."""
    lineup = list(runs)
    rate = {kind: run["events_per_s"] for kind, run in runs.items()}
    cpu = {kind: run["server_cpu_us_per_event"] for kind, run in runs.items()}
    goal = next(k for k in lineup if compare.is_bamboo(k))
    point: dict[str, Any] = {"sessions": sessions, "goal_kind": goal, "runs": runs, "ratios": {}}
    if compare.RELAY in runs:
        point["ratio"] = compare.ratio(rate, (goal, compare.RELAY))
        # events per CPU-second, relative: the relay's CPU per event over Bamboo's
        point["cpu_ratio"] = compare.ratio(cpu, (compare.RELAY, goal))
        print(common.ratio_line("throughput", f"sessions={sessions}", point["ratio"], ">= 0.6"))
    for pair in compare.pairs(lineup):
        if pair == (goal, compare.RELAY):
            continue
        name = f"{pair[0]}/{pair[1]}"
        point["ratios"][name] = compare.ratio(rate, pair)
        value = point["ratios"][name]
        print(common.ratio_line("throughput", f"sessions={sessions} {name}", value, "-"))
    for kind in lineup:  # each batching agent against the same server kind without
        base = kind.removesuffix(compare.BATCH)
        if compare.batches(kind) and base in runs:
            name = f"{kind}/{base}"
            point["ratios"][name] = compare.ratio(rate, (kind, base))
            print(
                common.ratio_line(
                    "throughput", f"sessions={sessions} {name}", point["ratios"][name], "-"
                )
            )
            point.setdefault("cpu_ratios", {})[name] = compare.ratio(cpu, (kind, base))
            print(f"  server CPU us/event {name} = {point['cpu_ratios'][name]:.3f}", flush=True)
    costs = ", ".join(f"{kind} {value:.1f}" for kind, value in cpu.items())
    print(f"  server CPU us/event: {costs}", flush=True)
    if "cpu_ratio" in point:
        print(
            f"  server CPU efficiency bamboo/baseline (events per CPU-second) = "
            f"{point['cpu_ratio']:.3f}",
            flush=True,
        )
    return point


def table(points: list[dict[str, Any]]) -> str:
    rows = []
    for point in points:
        rate = {kind: run["events_per_s"] for kind, run in point["runs"].items()}
        for kind, run in point["runs"].items():
            rows.append(
                [
                    str(point["sessions"]),
                    kind,
                    f"{run['events_per_s']:,.0f}",
                    compare.versus(rate, kind, compare.RELAY, "{:.2f}x".format),
                    compare.versus(rate, kind, compare.SOCKETIO, "{:.2f}x".format),
                    f"{run['server_cpu_us_per_event']:.1f}",
                    f"{run['driver_cpu_s']:.1f}",
                ]
            )
    header = [
        "sessions",
        "peer",
        "events/s",
        "vs relay",
        "vs Socket.IO",
        "server CPU us/event",
        "driver CPU s",
    ]
    return compare.markdown_table(header, rows)


async def warm_up(servers: Servers, args: argparse.Namespace) -> None:
    """One unmeasured run per peer first, of about WARMUP_EVENTS: V8 compiles the hot
    paths of Socket.IO's server and client over their first ten thousand events or so
    (a fresh pair delivered 14,000, 26,000, 38,000 then 51,000 events/s in four runs of
    4,000 events at 20 sessions), and every server fills its caches and pools."""
    sessions = min(max(args.sessions), math.ceil(WARMUP_EVENTS / args.events))
    print(f"warm-up: one unmeasured run per peer at {sessions} sessions", flush=True)
    for kind in servers.lineup:
        await servers.run_once(kind, sessions, args.events, args.window)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    lineup = compare.kinds(args)
    points: list[dict[str, Any]] = []
    with common.workdir("throughput") as tmp:
        async with Servers(lineup, tmp) as servers:
            if args.warmup:
                await warm_up(servers, args)
            for sessions in args.sessions:
                runs = {}
                for kind in lineup:
                    runs[kind] = await measure(servers, kind, sessions, args.events, args.window)
                points.append(report_point(sessions, runs))
    print(table(points), flush=True)
    return {"question": "throughput", "window": args.window, "points": points}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions",
        type=int,
        nargs="+",
        default=[100, 250, 500, 1000] if full else [20, 100],
        help="session counts to measure (one point each)",
    )
    parser.add_argument("--events", type=int, default=200, help="events per session")
    parser.add_argument("--window", type=int, default=32, help="unacked requests per agent")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the unmeasured first run per peer",
    )
    compare.add_args(parser, batches=True)
    common.add_common_args(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
