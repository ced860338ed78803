"""Question 4, reconnect storm: after a server restart, how fast is every viewer back,
and does any of them lose or repeat an event?

S sessions, one agent and V viewers each (S x V viewers). The agents publish the first
quarter of their M events; the viewers attach mid-stream (``last_seq: 0``, so they get
the past as replay, then live events) while the agents keep publishing at a steady
pace. Then the server gets SIGTERM (graceful: ``closed`` and close 1012), and a new
server process starts on the same port with the same data directory. Every peer
reconnects with jittered retries; viewers resume with ``last_seq`` and ``epoch``, agents
resend what was not acknowledged with the same idempotency key (the agents and viewers
run in ``--drivers`` processes, bench/storm_worker.py). Each viewer must end
with seqs 1..M exactly, every token index exactly once. Goal: all resumed, 0 lost,
0 duplicated, all resumed within 5 s of being disconnected (issue 14; 10 s before).
A viewer is disconnected when its client's connection ends, which is when the old
server exits (its close frame comes earlier, during the shutdown): the time after the
SIGTERM, the shutdown included, is printed beside it.

Where the time goes: the phases (the old server's shutdown, the new one's start until
it listens, the reconnects), when half, 90% and 99% of the viewers were back, their
failed attempts by kind, and, from listening to the last resume, the share of a core
the new server and the drivers used (read every 50 ms from their CPU clocks): the one
near 1.0 is what the reconnects waited for; below both, the clients' backoff did.

The baseline relay is restarted the same way with the same number of subscribers; it has
no resume, so its figures are the time for all to reconnect and the events they missed.

    python -m bench.reconnect_storm                  # 500 viewers (100 sessions x 5)
    BENCH_FULL=1 python -m bench.reconnect_storm     # 5,000 viewers (1,000 sessions x 5)
    python -m bench.reconnect_storm --sessions 3 --viewers 2 --events 40   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common
from .peers import open_ws
from .storm_worker import with_retries
from .workers import DriverGroup, DriverProcess

CONNECT_CONCURRENCY = 100  # handshakes in flight at once, as jittered clients would spread
RUN_TIMEOUT = 300.0
GOAL_SECONDS = 5.0  # from the first viewer dropped to the last one resumed


async def storm_bamboo(
    tmp: Path, sessions: int, viewers_per: int, events: int, pace: float, drivers: int
) -> dict[str, Any]:
    data_dir = tmp / "data"
    first = common.bamboo_server(data_dir, tmp / "bamboo.log").start()
    port = first.port
    ids = [f"storm-{i}" for i in range(sessions)]
    count = max(1, min(drivers, sessions))
    group = DriverGroup(
        [
            DriverProcess(
                f"storm[{index}]",
                [sys.executable, "-m", "bench.storm_worker"],
                {
                    "base": f"ws://{common.HOST}:{port}",
                    "sessions": ids[index::count],
                    "viewers": viewers_per,
                    "events": events,
                    "pace": pace,
                    "concurrency": max(1, CONNECT_CONCURRENCY // count),
                },
            )
            for index in range(count)
        ]
    )
    second: common.ServerProcess | None = None
    samples: list[tuple[float, float, float]] = []
    try:
        async with asyncio.timeout(RUN_TIMEOUT), group:
            await group.ready()
            group.go()
            # Restart while the agents are still publishing (a quarter into the live part).
            await asyncio.sleep(min(1.0, 0.25 * (events - events // 4) * pace))
            stopped_at = time.perf_counter()
            exit_code = await asyncio.to_thread(first.terminate)
            down_at = time.perf_counter()
            second = common.bamboo_server(data_dir, tmp / "bamboo.log")
            await asyncio.to_thread(second.start, port)
            ready_at = time.perf_counter()
            driver_pids = [d.pid for d in group.drivers]
            sampler = asyncio.ensure_future(sample_cpu(second.pid, driver_pids, samples))
            try:
                parts = await group.results()
            finally:
                sampler.cancel()
            # The new server's work for the storm and the live stream after it, and the
            # pages its replays read from the store, and how long they waited for their
            # peer's replay allowance (a server without the metric: None).
            server_cpu = common.cpu_seconds(second.pid)
            store_reads = await asyncio.to_thread(server_metric, second.port, "replay_store_reads")
            replay_wait = await asyncio.to_thread(server_metric, second.port, "replay_wait_seconds")
    finally:
        if second is not None:
            second.terminate()
        first.terminate()
    result = merged(parts, stopped_at, down_at, ready_at, exit_code, sessions, events)
    return (
        result
        | busy_while_back(samples, ready_at, ready_at + result["all_back_after_ready_s"])
        | {
            "new_server_cpu_s": server_cpu,
            "replay_store_reads": None if store_reads is None else int(store_reads),
            "replay_wait_s": replay_wait,
        }
    )


SAMPLE_EVERY = 0.05  # seconds between two readings of the CPU clocks


async def sample_cpu(
    server: int, drivers: list[int], into: list[tuple[float, float, float]]
) -> None:
    """Reads the new server's and the drivers' CPU clocks until cancelled: (time, server
    CPU, drivers' CPU), so the reconnect phase's share of each can be told apart."""
    while True:
        into.append(
            (time.perf_counter(), common.cpu_seconds(server), sum(map(common.cpu_seconds, drivers)))
        )
        await asyncio.sleep(SAMPLE_EVERY)


def busy_while_back(
    samples: list[tuple[float, float, float]], start: float, end: float
) -> dict[str, float | None]:
    """The CPU the new server and the drivers used from ``start`` (the new server
    listening) to ``end`` (the last viewer resumed), as fractions of a core: the one
    near 1.0 is what the reconnect phase waited for."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return {"server_busy": None, "drivers_busy": None, "server_cpu_while_back_s": None}
    (t0, server0, drivers0), (t1, server1, drivers1) = inside[0], inside[-1]
    return {
        "server_cpu_while_back_s": server1 - server0,
        "server_busy": (server1 - server0) / (t1 - t0),
        "drivers_busy": (drivers1 - drivers0) / (t1 - t0),
    }


def server_metric(port: int, name: str) -> float | None:
    """``bamboo_<name>_total`` of the server on ``port``, if it has it."""
    url = f"http://{common.HOST}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"bamboo_{name}_total "):
                return float(line.split()[1])
    return None


def merged(
    parts: list[dict[str, Any]],
    stopped_at: float,
    down_at: float,
    ready_at: float,
    exit_code: int | None,
    sessions: int,
    events: int,
) -> dict[str, Any]:
    """The drivers' counts added up, and the storm's times from their clocks."""
    closes: dict[str, int] = {}
    for part in parts:
        for code, n in part["close_codes"].items():
            closes[code] = closes.get(code, 0) + n
    drops = [p["first_drop"] for p in parts if p["first_drop"] is not None]
    resumes = [p["last_resume"] for p in parts if p["last_resume"] is not None]
    first_drop = min(drops, default=stopped_at)
    last_resume = max(resumes, default=ready_at)
    total = {k: sum(p[k] for p in parts) for k in ("viewers", "reconnected", "resumed")}
    total |= {k: sum(p[k] for p in parts) for k in ("lost", "duplicated", "gaps", "replays")}
    failed: dict[str, int] = {}
    for part in parts:
        for kind, n in part["failed_attempts"].items():
            failed[kind] = failed.get(kind, 0) + n
    back = sorted(t - ready_at for p in parts for t in p["resumed_at"])
    return {
        "kind": "bamboo",
        **total,
        "sessions": sessions,
        "events_per_session": events,
        "drivers": len(parts),
        "close_codes": closes,
        "old_server_exit": exit_code,
        "shutdown_s": down_at - stopped_at,
        "restart_s": ready_at - down_at,
        "all_back_after_drop_s": last_resume - first_drop,
        "all_back_after_stop_s": last_resume - stopped_at,
        "all_back_after_ready_s": last_resume - ready_at,
        # Seconds after the new server listened by which half, 90% and 99% were back.
        "back_after_ready_s": {f"p{q}": common.percentile(back, q / 100) for q in (50, 90, 99)},
        "failed_attempts": failed,
    }


async def storm_baseline(tmp: Path, sessions: int, viewers_per: int) -> dict[str, Any]:
    """The relay restarted with as many subscribers: time until all are back."""
    first = common.baseline_server(tmp / "baseline.log").start()
    port = first.port
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    names = [f"storm-{i}" for i in range(sessions) for _ in range(viewers_per)]
    back_at: list[float] = []
    dropped_at: list[float] = []

    async def subscriber(name: str, attached: asyncio.Event) -> None:
        for attempt in range(2):
            ws = await with_retries(
                lambda: open_ws(f"ws://{common.HOST}:{port}/sub/{name}", subprotocol=False), gate
            )
            if attempt:
                back_at.append(time.perf_counter())
                await ws.close()
                return
            attached.set()
            await ws.wait_closed()
            dropped_at.append(time.perf_counter())

    second: common.ServerProcess | None = None
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            attached = [asyncio.Event() for _ in names]
            tasks = [asyncio.ensure_future(subscriber(n, attached[i])) for i, n in enumerate(names)]
            await asyncio.gather(*(e.wait() for e in attached))
            common.settle_driver_collector()  # as the Bamboo drivers do
            stopped_at = time.perf_counter()
            await asyncio.to_thread(first.terminate)
            down_at = time.perf_counter()
            second = common.baseline_server(tmp / "baseline.log")
            await asyncio.to_thread(second.start, port)
            ready_at = time.perf_counter()
            await asyncio.gather(*tasks)
    finally:
        if second is not None:
            second.terminate()
        first.terminate()
    return {
        "kind": "baseline",
        "viewers": len(names),
        "reconnected": len(back_at),
        "shutdown_s": down_at - stopped_at,
        "restart_s": ready_at - down_at,
        "all_back_after_drop_s": max(back_at) - min(dropped_at),
        "all_back_after_ready_s": max(back_at) - ready_at,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    with common.workdir("storm") as tmp:
        baseline = await storm_baseline(tmp, args.sessions, args.viewers)
        print(
            f"baseline  {baseline['viewers']} subscribers: all {baseline['reconnected']} back "
            f"{baseline['all_back_after_drop_s']:.2f} s after the first drop "
            f"({baseline['all_back_after_ready_s']:.2f} s after the new relay listened; "
            f"shutdown {baseline['shutdown_s']:.2f} s, start {baseline['restart_s']:.2f} s)",
            flush=True,
        )
        bamboo = await storm_bamboo(
            tmp, args.sessions, args.viewers, args.events, args.pace, args.drivers
        )
    print(
        f"bamboo    {bamboo['viewers']} viewers: {bamboo['resumed']} resumed, "
        f"{bamboo['lost']} lost, {bamboo['duplicated']} duplicated, {bamboo['gaps']} gaps; "
        f"all back {bamboo['all_back_after_drop_s']:.2f} s after the first drop "
        f"({bamboo['all_back_after_stop_s']:.2f} s after the SIGTERM, "
        f"{bamboo['all_back_after_ready_s']:.2f} s after the new server listened; shutdown "
        f"{bamboo['shutdown_s']:.2f} s, start {bamboo['restart_s']:.2f} s); close codes "
        f"{bamboo['close_codes']}; {bamboo['drivers']} driver process(es)",
        flush=True,
    )
    print(
        f"bamboo    new server: {bamboo['new_server_cpu_s']:.2f} s of CPU until the agents "
        f"were done; {bamboo['replays']} resumes had events to replay; replay pages read "
        f"from the store: {bamboo['replay_store_reads']}; seconds replays waited for "
        f"their peer's allowance: {bamboo['replay_wait_s']}",
        flush=True,
    )
    quantiles = ", ".join(f"{k} {v:.2f} s" for k, v in bamboo["back_after_ready_s"].items())
    print(
        f"bamboo    viewers back after the new server listened: {quantiles}; failed "
        f"attempts to reconnect: {bamboo['failed_attempts']}",
        flush=True,
    )
    if bamboo["server_busy"] is not None:
        print(
            f"bamboo    from listening to the last resume: the new server used "
            f"{bamboo['server_busy']:.2f} of a core, the driver process(es) "
            f"{bamboo['drivers_busy']:.2f}; the server's CPU per viewer back (the live "
            f"stream's share included): "
            f"{bamboo['server_cpu_while_back_s'] / max(1, bamboo['reconnected']) * 1e6:.0f} us",
            flush=True,
        )
    ratio = bamboo["all_back_after_drop_s"] / max(baseline["all_back_after_drop_s"], 1e-9)
    print(common.ratio_line("reconnect", "time to all back bamboo/baseline", ratio, "-"))
    print(
        common.ratio_line(
            "reconnect",
            f"time to all resumed/{GOAL_SECONDS:g}s",
            bamboo["all_back_after_drop_s"] / GOAL_SECONDS,
            "<= 1.0",
        )
    )
    print(
        common.ratio_line(
            "reconnect",
            f"time to all resumed after the SIGTERM/{GOAL_SECONDS:g}s",
            bamboo["all_back_after_stop_s"] / GOAL_SECONDS,
            "-",
        )
    )
    print(
        common.ratio_line(
            "reconnect",
            "resumed/viewers",
            bamboo["resumed"] / bamboo["viewers"],
            "= 1.0, 0 lost, 0 duplicated",
        )
    )
    return {"question": "reconnect_storm", "baseline": baseline, "bamboo": bamboo, "ratio": ratio}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000 if full else 100)
    parser.add_argument("--viewers", type=int, default=5, help="viewers per session")
    parser.add_argument(
        "--events",
        type=int,
        default=60 if full else 200,  # full: ~20 s of live stream at the default pace
        help="events per session",
    )
    # The live stream offers 2,000 events/s in all whatever the size (the latency
    # question's rate), so the storm measures reconnecting, not a server already
    # saturated by fan-out: at 0.02 s, 1,000 agents offered 50,000 events/s to 5 viewers
    # each, beyond what one process (and the driver) can deliver.
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        help="seconds between an agent's live events (default: sessions / 2000)",
    )
    parser.add_argument(
        "--drivers",
        type=int,
        default=1,
        help="driver processes for Bamboo's agents and viewers (on 2 cores more than one "
        "only takes CPU from the server: 5.5, 6.5 and 8.6 s with 1, 2 and 3)",
    )
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if args.pace is None:
        args.pace = args.sessions / 2000
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
