"""Question 2, latency: how long from an agent's publish to the viewer's screen, at a
fixed load that does not saturate the server?

Open loop: events are offered at a fixed total rate spread round-robin over S sessions
(one agent and one viewer each), whatever the server's pace, and each carries its
*scheduled* send time (a ``custom`` event with ``data: {t: ...}``), so a stall counts
for every event it delays (no coordinated omission). The viewer notes arrival time;
the first ``--warmup`` seconds are dropped. Measured in one invocation, one after
another at the same rate: the relay (bench/baseline_relay.py), Socket.IO
(bench/socketio/: the publisher emits with an acknowledgement, the room's viewers get
the broadcast) and Bamboo with ``fsync`` durability (the event is on disk before it is
fanned out) and with ``os``. Goal: Bamboo (fsync) p99 <= 10 ms and <= 2x the relay's.

The load is offered by ``--drivers`` processes (bench/latency_worker.py for Bamboo and
the relay, bench/socketio/driver.js for Socket.IO), each with its share of the sessions
and of the rate from one common start; their samples are merged. Each run reports the
rate the drivers really achieved and how late they sent, so a driver that cannot keep
up shows.

    python -m bench.latency                    # 2,000 events/s over 200 sessions, 5 s
    BENCH_FULL=1 python -m bench.latency       # 10,000 events/s over 1,000 sessions, 20 s
    python -m bench.latency --rate 200 --sessions 4 --seconds 1 --warmup 0.2   # smoke
    python -m bench.latency --peers relay --durability fsync    # the pre-Socket.IO line-up
    python -m bench.latency --codec msgpack    # Bamboo's agents publish in MessagePack
"""

from __future__ import annotations

import argparse
import array
import asyncio
import math
import sys
import time
from pathlib import Path
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common, compare, socketio_peer
from .workers import DriverGroup, DriverProcess

HISTOGRAM_BINS = 200
# One Python driver process at 10,000 events/s over 1,000 sessions used ~40% of a core
# and sent p99 2 to 54 ms behind schedule against the relay (three runs); two sent 2 to
# 12 ms late (four runs); four did no better than two on 2 cores (bench/RESULTS.md).
RATE_PER_DRIVER = 5_000
RESULT_TIMEOUT_EXTRA = 90.0  # past --seconds: stragglers (5 s) and a slow machine


def drivers_for(
    kind: str, url: str, names: list[str], args: argparse.Namespace, tmp: Path
) -> list[DriverProcess]:
    """One driver per share of the sessions, with its share of the rate."""
    count = max(1, min(args.drivers, len(names)))
    drivers: list[DriverProcess] = []
    for index in range(count):
        share = names[index::count]
        config = {
            "mode": "latency",
            "kind": "bamboo" if compare.speaks_bamboo(kind) else kind,
            "url": url,
            "sessions": share,
            "rate": args.rate * len(share) / len(names),
            "seconds": args.seconds,
            "warmup": args.warmup,
            "samples_path": str(tmp / f"{kind}-{index}.f64"),
            "codec": args.codec,
        }
        name = f"{kind}[{index}]"
        if kind == compare.SOCKETIO:
            drivers.append(socketio_peer.driver(name, config))
        else:
            argv = [sys.executable, "-m", "bench.latency_worker"]
            drivers.append(DriverProcess(name, argv, config))
    return drivers


def server_url(kind: str, server: common.ServerProcess) -> str:
    if kind == compare.SOCKETIO:
        return socketio_peer.url(server)
    return f"ws://{common.HOST}:{server.port}"


async def measure(
    kind: str, server: common.ServerProcess, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    stamp = time.monotonic_ns()
    names = [f"lat-{stamp}-{i}" for i in range(args.sessions)]
    drivers = drivers_for(kind, server_url(kind, server), names, args, tmp)
    async with DriverGroup(drivers) as group:
        await group.ready()
        cpu_before = common.cpu_seconds(server.pid)
        group.go()
        async with asyncio.timeout(args.seconds + RESULT_TIMEOUT_EXTRA):
            results = await group.results()
        server_cpu = common.cpu_seconds(server.pid) - cpu_before
    samples = read_samples([Path(d.config["samples_path"]) for d in drivers])
    return summarize(kind, args, results, sorted(samples), server_cpu)


def read_samples(paths: list[Path]) -> array.array[float]:
    """Every driver's latencies (native float64 seconds), merged."""
    samples: array.array[float] = array.array("d")
    for path in paths:
        samples.frombytes(path.read_bytes())
    return samples


def summarize(
    kind: str,
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    values: list[float],
    server_cpu: float,
) -> dict[str, Any]:
    sent = sum(r["sent"] for r in results)
    expected = sum(r["expected"] for r in results)
    last_send = max(r["last_send_s"] for r in results)
    ms = [v * 1000 for v in values]
    result = {
        "kind": kind,
        "rate": args.rate,
        "sessions": args.sessions,
        "drivers": len(results),
        "sent": sent,
        "measured": len(values),
        "missing": max(0, expected - len(values)),
        # On time, the last send is due 1/rate before --seconds; any later is lag.
        "achieved_rate": sent / max(args.seconds, last_send),
        "send_lag_p99_ms": 1000 * max(r["send_lag_p99_s"] for r in results),
        "worst_send_lag_ms": 1000 * max(r["worst_lag_s"] for r in results),
        "busiest_driver_cpu_share": max(
            r["offer_cpu_s"] / max(r["last_send_s"], 1e-9) for r in results
        ),
        "server_cpu_share": server_cpu / args.seconds,
        "server_cpu_us_per_event": 1e6 * server_cpu / max(sent, 1),
        "p50_ms": common.percentile(ms, 0.50),
        "p99_ms": common.percentile(ms, 0.99),
        "p999_ms": common.percentile(ms, 0.999),
        "max_ms": ms[-1] if ms else float("nan"),
        "histogram_ms": histogram(ms),
    }
    print(
        f"{kind:12s} {args.rate:7.0f} events/s over {args.sessions} sessions: "
        f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
        f"p99.9 {result['p999_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
        f"({len(values)} measured, {result['missing']} missing; offered "
        f"{result['achieved_rate']:.0f}/s by {len(results)} driver(s), send lag p99 "
        f"{result['send_lag_p99_ms']:.1f} ms, worst {result['worst_send_lag_ms']:.1f} ms, "
        f"busiest driver CPU {result['busiest_driver_cpu_share']:.0%}; server CPU "
        f"{result['server_cpu_share']:.0%}, {result['server_cpu_us_per_event']:.1f} us/event)",
        flush=True,
    )
    return result


def histogram(ms: list[float]) -> dict[str, list[float]]:
    """Counts over log-spaced bins, for the plot (the raw values would be too many)."""
    if not ms:
        return {"edges": [], "counts": []}
    low, high = max(min(ms), 0.01), max(ms)
    if high <= low:
        high = low * 1.01
    ratio = (high / low) ** (1 / HISTOGRAM_BINS)
    edges = [low * ratio**i for i in range(HISTOGRAM_BINS + 1)]
    counts = [0.0] * HISTOGRAM_BINS
    j = 0
    for value in ms:  # sorted
        while j < HISTOGRAM_BINS - 1 and value >= edges[j + 1]:
            j += 1
        counts[j] += 1
    return {"edges": edges, "counts": counts}


def report(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The RATIO lines and the table; the ratios by name."""
    lineup = list(runs)
    p99 = {kind: run["p99_ms"] for kind, run in runs.items()}
    p50 = {kind: run["p50_ms"] for kind, run in runs.items()}
    ratios: dict[str, float] = {}
    goal = next(k for k in lineup if compare.is_bamboo(k))
    if compare.RELAY in runs:
        name = "p99 bamboo/baseline"  # the goal line, named as before Socket.IO came
        ratios[name] = compare.ratio(p99, (goal, compare.RELAY))
        line = common.ratio_line("latency", "p99 bamboo/baseline", ratios[name], "<= 2.0")
        print(line)
    print(common.ratio_line("latency", "p99 bamboo/10ms", p99[goal] / 10, "<= 1.0"))
    for pair in compare.pairs(lineup):
        if pair == (goal, compare.RELAY):
            continue
        name = f"p99 {pair[0]}/{pair[1]}"
        ratios[name] = compare.ratio(p99, pair)
        print(common.ratio_line("latency", name, ratios[name], "-"))
    rows = []
    for kind, run in runs.items():
        rows.append(
            [
                kind,
                f"{run['achieved_rate']:,.0f} of {run['rate']:,.0f} ({run['drivers']})",
                f"{run['p50_ms']:.2f}",
                f"{run['p99_ms']:.2f}",
                f"{run['p999_ms']:.2f}",
                compare.versus(p50, kind, compare.RELAY, "{:.2f}x".format),
                compare.versus(p99, kind, compare.RELAY, "{:.2f}x".format),
                compare.versus(p99, kind, compare.SOCKETIO, "{:.2f}x".format),
                f"{run['server_cpu_share']:.0%}",
                f"{run['server_cpu_us_per_event']:.1f}",
            ]
        )
    header = [
        "peer",
        "events/s offered (drivers)",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "p50 vs relay",
        "p99 vs relay",
        "p99 vs Socket.IO",
        "server CPU",
        "server CPU us/event",
    ]
    print(compare.markdown_table(header, rows), flush=True)
    return ratios


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    lineup = compare.kinds(args)
    runs: dict[str, dict[str, Any]] = {}
    with common.workdir("latency") as tmp:
        for kind in lineup:
            # One server at a time: an idle Bamboo still syncs its logs in the background.
            server = compare.server(kind, tmp).start()
            try:
                runs[kind] = await measure(kind, server, args, tmp)
            finally:
                server.terminate()
    ratios = report(runs)
    goal = next(k for k in lineup if compare.is_bamboo(k))
    return {
        "question": "latency",
        "runs": runs,
        "p99_ratio": ratios.get("p99 bamboo/baseline"),
        "goal_kind": goal,
        "ratios": ratios,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000 if full else 2_000)
    parser.add_argument("--sessions", type=int, default=1_000 if full else 200)
    parser.add_argument("--seconds", type=float, default=20 if full else 5)
    parser.add_argument("--warmup", type=float, default=2 if full else 1)
    parser.add_argument(
        "--drivers",
        type=int,
        default=0,
        help=f"driver processes (default: one per {RATE_PER_DRIVER:,} events/s)",
    )
    parser.add_argument(
        "--codec",
        choices=("json", "msgpack"),
        default="json",
        help="what Bamboo's agents publish in (viewers read JSON; the relay and "
        "Socket.IO carry JSON)",
    )
    compare.add_args(parser)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.drivers <= 0:
        args.drivers = max(1, math.ceil(args.rate / RATE_PER_DRIVER))
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
