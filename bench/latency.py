"""Question 2, latency: how long from an agent's publish to the viewer's screen, at a
fixed load that does not saturate the server?

Open loop: events are offered at a fixed total rate spread round-robin over S sessions
(one agent and one viewer each), whatever the server's pace, and each carries its
*scheduled* send time (a ``custom`` event with ``data: {t: ...}``), so a stall counts
for every event it delays (no coordinated omission). The viewer notes arrival time;
the first ``--warmup`` seconds are dropped. Bamboo (``fsync`` durability: the event is
on disk before it is fanned out) and the baseline relay run at the same rate in the same
invocation. Goal: Bamboo p99 <= 10 ms and <= 2x the baseline's p99.

    python -m bench.latency                    # 2,000 events/s over 200 sessions, 5 s
    BENCH_FULL=1 python -m bench.latency       # 10,000 events/s over 1,000 sessions, 20 s
    python -m bench.latency --rate 200 --sessions 4 --seconds 1 --warmup 0.2   # smoke
"""

from __future__ import annotations

import argparse
import array
import asyncio
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from . import common
from .peers import bamboo_attach, decode_frame, open_ws, timed_frame

CONNECT_CONCURRENCY = 50
TICK = 0.001  # the scheduler wakes this often and sends every event that is due
HISTOGRAM_BINS = 200


async def drain(ws: ClientConnection) -> None:
    """Read and drop what an agent gets back (acks): a real agent reads them too."""
    while True:
        await ws.recv(decode=False)


async def watch(ws: ClientConnection, latencies: array.array[float], measure_from: float) -> None:
    while True:
        data = await ws.recv(decode=False)
        arrived = time.perf_counter()
        frame = decode_frame(data)
        if frame.type != "event" or frame.event is None or frame.event.data is None:
            continue
        sent = frame.event.data.t
        if sent >= measure_from:
            latencies.append(arrived - sent)


async def offer(
    agents: list[ClientConnection], rate: float, seconds: float, start: float
) -> tuple[int, float]:
    """Send ``rate`` events a second for ``seconds``, round-robin over the agents; the
    number sent and the worst lag behind schedule."""
    total = int(rate * seconds)
    sent = 0
    worst_lag = 0.0
    count = len(agents)
    while sent < total:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while sent < due:
            scheduled = start + sent / rate
            worst_lag = max(worst_lag, now - scheduled)
            await agents[sent % count].send(timed_frame(scheduled), text=True)
            sent += 1
        await asyncio.sleep(TICK)
    return sent, worst_lag


async def measure(
    kind: str, server: common.ServerProcess, sessions: int, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    base = f"ws://{common.HOST}:{server.port}"
    stamp = time.monotonic_ns()
    if kind == "baseline":
        names = [f"lat-{stamp}-{i}" for i in range(sessions)]
        viewers = await common.gather_bounded(
            [open_ws(server.url(f"/sub/{n}"), subprotocol=False) for n in names],
            CONNECT_CONCURRENCY,
        )
        agents = await common.gather_bounded(
            [open_ws(server.url(f"/pub/{n}"), subprotocol=False) for n in names],
            CONNECT_CONCURRENCY,
        )
        await asyncio.sleep(0.2)
    else:
        ids = [f"lat-{stamp}-{i}" for i in range(sessions)]
        agents = [
            ws
            for ws, _ in await common.gather_bounded(
                [bamboo_attach(base, s, role="agent", create=True) for s in ids],
                CONNECT_CONCURRENCY,
            )
        ]
        viewers = [
            ws
            for ws, _ in await common.gather_bounded(
                [bamboo_attach(base, s) for s in ids], CONNECT_CONCURRENCY
            )
        ]
    latencies: array.array[float] = array.array("d")
    start = time.perf_counter() + 0.1
    tasks = [asyncio.ensure_future(watch(v, latencies, start + args.warmup)) for v in viewers]
    tasks += [asyncio.ensure_future(drain(a)) for a in agents]
    cpu_before = common.cpu_seconds(server.pid)
    try:
        async with asyncio.timeout(args.seconds + 60):
            sent, worst_lag = await offer(agents, rate, args.seconds, start)
            expected = sent - int(rate * args.warmup)
            deadline = time.perf_counter() + 5.0
            while len(latencies) < expected and time.perf_counter() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the stragglers still in flight
    finally:
        server_cpu = common.cpu_seconds(server.pid) - cpu_before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in [*agents, *viewers]), return_exceptions=True)
    values = sorted(latencies)
    ms = [v * 1000 for v in values]
    result = {
        "kind": kind,
        "rate": rate,
        "sessions": sessions,
        "sent": sent,
        "measured": len(values),
        "missing": max(0, expected - len(values)),
        "worst_send_lag_ms": worst_lag * 1000,
        "server_cpu_share": server_cpu / args.seconds,
        "p50_ms": common.percentile(ms, 0.50),
        "p99_ms": common.percentile(ms, 0.99),
        "p999_ms": common.percentile(ms, 0.999),
        "max_ms": ms[-1] if ms else float("nan"),
        "histogram_ms": histogram(ms),
    }
    print(
        f"{kind:9s} {rate:7.0f} events/s over {sessions} sessions: "
        f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
        f"p99.9 {result['p999_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
        f"({len(values)} measured, {result['missing']} missing, worst send lag "
        f"{result['worst_send_lag_ms']:.1f} ms, server CPU {result['server_cpu_share']:.0%})",
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


async def main(args: argparse.Namespace) -> dict[str, Any]:
    common.raise_nofile()
    with common.workdir("latency") as tmp:
        baseline = common.baseline_server(tmp / "baseline.log").start()
        bamboo = common.bamboo_server(
            tmp / "data", tmp / "bamboo.log", "--durability", args.durability
        ).start()
        try:
            runs = {}
            for kind, server in (("baseline", baseline), ("bamboo", bamboo)):
                runs[kind] = await measure(kind, server, args.sessions, args.rate, args)
        finally:
            bamboo.terminate()
            baseline.terminate()
    p99_ratio = runs["bamboo"]["p99_ms"] / max(runs["baseline"]["p99_ms"], 1e-9)
    print(common.ratio_line("latency", "p99 bamboo/baseline", p99_ratio, "<= 2.0"))
    print(common.ratio_line("latency", "p99 bamboo/10ms", runs["bamboo"]["p99_ms"] / 10, "<= 1.0"))
    return {"question": "latency", "runs": runs, "p99_ratio": p99_ratio}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=10_000 if full else 2_000)
    parser.add_argument("--sessions", type=int, default=1_000 if full else 200)
    parser.add_argument("--seconds", type=float, default=20 if full else 5)
    parser.add_argument("--warmup", type=float, default=2 if full else 1)
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
