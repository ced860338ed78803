"""Question 1, durable throughput: how many events a second does Bamboo deliver, with
``fsync`` durability, when P agents publish and P viewers watch?

P sessions; in each, one agent publishes N token events, pipelined with at most
``--window`` unacknowledged requests (as a real agent does), and one viewer receives
them, checking order and gaps. The figure is events delivered to viewers per second,
from the first publish to the last delivery. The baseline relay (bench/baseline_relay.py)
does the same work in the same invocation: P producers, N frames each, one subscriber
each, forwarded without decoding, no acks, no storage. Goal: Bamboo >= 0.6x baseline
(stretch 0.8x).

Also reported: server CPU seconds per 1,000 events for both (less sensitive to a noisy
neighbour than wall time), and the driver's own CPU, since driver and server share the
machine's cores.

    python -m bench.throughput                  # P in 20, 100; N = 200
    BENCH_FULL=1 python -m bench.throughput     # P in 100, 250, 500, 1000; N = 200
    python -m bench.throughput --sessions 3 --events 20   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from . import common
from .peers import bamboo_attach, open_ws, publish_unacked, publish_windowed, receive_events

RUN_TIMEOUT = 300.0  # no single measurement may take longer than this
CONNECT_CONCURRENCY = 50


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
    server: common.ServerProcess, sessions: int, events: int, window: int
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
        await asyncio.gather(*(publish_windowed(a, events, window) for a in agents), *receiving)
        return time.perf_counter() - start
    finally:
        await asyncio.gather(*(ws.close() for ws in [*agents, *viewers]), return_exceptions=True)


async def measure(
    kind: str, server: common.ServerProcess, sessions: int, events: int, window: int
) -> dict[str, Any]:
    cpu_before = common.cpu_seconds(server.pid)
    driver_before = time.process_time()
    async with asyncio.timeout(RUN_TIMEOUT):
        if kind == "baseline":
            elapsed = await measure_baseline(server, sessions, events)
        else:
            elapsed = await measure_bamboo(server, sessions, events, window)
    total = sessions * events
    # CPU is counted over connect + run + close: the same overheads for both kinds.
    server_cpu = common.cpu_seconds(server.pid) - cpu_before
    return {
        "kind": kind,
        "sessions": sessions,
        "events": total,
        "seconds": elapsed,
        "events_per_s": total / elapsed,
        "server_cpu_ms_per_1k": 1e6 * server_cpu / total,
        "driver_cpu_s": time.process_time() - driver_before,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    common.raise_nofile()
    points: list[dict[str, Any]] = []
    with common.workdir("throughput") as tmp:
        baseline = common.baseline_server(tmp / "baseline.log").start()
        bamboo = common.bamboo_server(
            tmp / "data", tmp / "bamboo.log", "--durability", args.durability
        ).start()
        try:
            for sessions in args.sessions:
                pair = {}
                for kind, server in (("baseline", baseline), ("bamboo", bamboo)):
                    pair[kind] = await measure(kind, server, sessions, args.events, args.window)
                    r = pair[kind]
                    print(
                        f"{kind:9s} sessions={sessions:5d} events={r['events']:7d} "
                        f"{r['events_per_s']:9.0f} events/s  server CPU "
                        f"{r['server_cpu_ms_per_1k']:6.1f} ms/1k events  "
                        f"driver CPU {r['driver_cpu_s']:.1f} s",
                        flush=True,
                    )
                ratio = pair["bamboo"]["events_per_s"] / pair["baseline"]["events_per_s"]
                cpu_ratio = pair["baseline"]["server_cpu_ms_per_1k"] / max(
                    pair["bamboo"]["server_cpu_ms_per_1k"], 1e-9
                )
                print(common.ratio_line("throughput", f"sessions={sessions}", ratio, ">= 0.6"))
                print(
                    f"  server CPU efficiency bamboo/baseline (events per CPU-second) = "
                    f"{cpu_ratio:.3f}",
                    flush=True,
                )
                points.append({**pair, "ratio": ratio, "cpu_ratio": cpu_ratio})
        finally:
            bamboo.terminate()
            baseline.terminate()
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
        "--durability",
        choices=("fsync", "os", "memory"),
        default="fsync",
        help="Bamboo's durability (the goal is for fsync; the others show what it costs)",
    )
    common.add_common_args(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
