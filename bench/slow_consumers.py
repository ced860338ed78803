"""Question: do peers that never read slow down the peers that do?

One session on a server subprocess; one publisher pushes events as fast as its window
of unacknowledged events allows; 10 readers read everything. Run A has only them; run B
adds 100 connections to the same session that never read a byte. The server must keep
the readers' throughput and latency within 2x of run A, and close each never-reading
peer with 4429 once its send queue overflows (after the kernel's socket buffers and
websockets' write buffer are full), never waiting on it.

Runs alternate (A, B, A, B, ...) in one invocation and the medians are compared, so the
drift of a shared machine cancels out. The driver (publisher, readers and the silent
peers) is this one process; the server is another.

Run: ``python -m bench.slow_consumers`` (``--events``, ``--payload``, ``--slow``,
``--readers``, ``--rounds``). Prints one JSON object; the lines for RESULTS.md go to
stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from .soak_server import Server

WINDOW = 64


def send_queue_drops(server: Server) -> int:
    """The server's count of connections closed 4429 for a full send queue."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("bamboo_send_queue_drops_total "):
                return int(float(line.split()[1]))
    return 0


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return welcome


async def read_events(ws: ClientConnection, total: int, latencies: list[float]) -> float:
    """Reads ``total`` events; the time the last one arrived."""
    count = 0
    while count < total:
        frame = json.loads(await ws.recv())
        if frame["type"] == "event":
            now = time.perf_counter()
            sent = float(frame["event"]["content"].partition("|")[0])
            latencies.append(now - sent)
            count += 1
    return time.perf_counter()


async def publish(ws: ClientConnection, total: int, payload: int) -> float:
    """Publishes ``total`` events, ``WINDOW`` unacknowledged at most; the start time."""
    window = asyncio.Semaphore(WINDOW)
    padding = "x" * payload
    acked = 0

    async def acks() -> None:
        nonlocal acked
        while acked < total:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("ack", "error"):
                assert frame["type"] == "ack", frame
                acked += 1
                window.release()

    reading = asyncio.create_task(acks())
    started = time.perf_counter()
    for i in range(total):
        await window.acquire()
        content = f"{time.perf_counter():.9f}|{padding}"
        await ws.send(
            json.dumps({"type": "event", "id": i, "event": {"type": "token", "content": content}})
        )
    await reading
    return started


async def one_run(
    server: Server, session_id: str, slow: int, readers: int, events: int, payload: int
) -> dict[str, Any]:
    url = server.url(session_id)
    drops_before = await asyncio.to_thread(send_queue_drops, server)
    async with contextlib.AsyncExitStack() as stack:
        silent = []
        for _ in range(slow):
            # max_queue=1: the client library stops reading at once, so the socket fills.
            ws = await stack.enter_async_context(connect(url, max_queue=1, close_timeout=1))
            await hello(ws, create=True)
            silent.append(ws)
        reading = []
        latencies: list[float] = []
        for _ in range(readers):
            ws = await stack.enter_async_context(connect(url, max_size=None, close_timeout=1))
            await hello(ws, create=True)
            reading.append(asyncio.create_task(read_events(ws, events, latencies)))
        publisher = await stack.enter_async_context(connect(url, close_timeout=1))
        await hello(publisher, create=True, role="agent")
        started = await publish(publisher, events, payload)
        finished = await asyncio.wait_for(asyncio.gather(*reading), 300)
        # A silent peer never reads its close frame: ask the server how many it dropped.
        dropped = await asyncio.to_thread(send_queue_drops, server) - drops_before
        for ws in silent:
            ws.transport.abort()  # no closing handshake through a full buffer
    elapsed = max(finished) - started
    latencies.sort()
    return {
        "slow": slow,
        "events_per_s_per_reader": events / elapsed,
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "slow_closed_4429": dropped,
    }


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server = Server(
        work / "data",
        work / "server.log",
        ("--durability", "os", "--rate-limit", "0", "--max-connections-per-user", "0"),
    )
    server.start()
    runs: list[dict[str, Any]] = []
    try:
        for round_ in range(args.rounds):
            for slow in (0, args.slow):
                run = await one_run(
                    server, f"r{round_}-s{slow}", slow, args.readers, args.events, args.payload
                )
                runs.append(run)
                print(json.dumps(run), file=sys.stderr)
    finally:
        server.stop()

    def median(slow: int, key: str) -> float:
        return float(statistics.median(r[key] for r in runs if r["slow"] == slow))

    summary = {}
    for key in ("events_per_s_per_reader", "latency_p50_ms", "latency_p99_ms"):
        summary[key] = {"without": median(0, key), "with": median(args.slow, key)}
    return {
        "question": "do never-reading peers slow down the readers? (goal: within 2x)",
        "command": " ".join(["python -m bench.slow_consumers", *sys.argv[1:]]),
        "nproc": os.cpu_count(),
        "slow": args.slow,
        "readers": args.readers,
        "events": args.events,
        "payload_bytes": args.payload,
        "throughput_ratio": summary["events_per_s_per_reader"]["without"]
        / summary["events_per_s_per_reader"]["with"],
        "latency_p50_ratio": summary["latency_p50_ms"]["with"]
        / summary["latency_p50_ms"]["without"],
        "latency_p99_ratio": summary["latency_p99_ms"]["with"]
        / summary["latency_p99_ms"]["without"],
        "medians": summary,
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slow", type=int, default=100)
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--payload", type=int, default=1024, help="bytes of padding per event")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bamboo-slow-consumers-") as work:
        result = asyncio.run(bench(args, Path(work)))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
