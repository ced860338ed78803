"""How long does ``/healthz`` take while a storm of HTTP requests whose peers reset as
soon as they have asked (pages, listings, ``/metrics``) runs against the server?

A ``serve`` (JSONL, fsync) holding one session of ``--messages`` messages of 7 KB and
100 sessions more. A separate process sends ``--rate`` requests a second for
``--seconds`` (each a new connection: a GET of a 100-message page, a listing of 100,
``/metrics``, in turn; then a reset, SO_LINGER 0); meanwhile ``/healthz`` is asked every
quarter second, each on a new connection, as a liveness probe does. Reported: the
probe's worst and median answer time, and the server's CPU per storm request (from
/proc). ``BENCH_BEFORE=<checkout>`` runs an older tree's server in the same invocation
(bench/compare.py), rounds alternated, for ratios against it.

    python -m bench.reset_storm --rate 1000 --seconds 8 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from . import common, compare

QUESTION = "reset_storm"
TARGETS = ("/api/v1/sessions/big?limit=100", "/api/v1/sessions?limit=100", "/metrics")
PROBE_EVERY = 0.25
PROBE_TIMEOUT = 60.0
# What common.bamboo_server gives this tree's server and compare.before_server does not.
SAME_FLAGS = ("--session-create-rate", "0", "--max-connections", "0")


def storm(port: int, rate: float, seconds: float) -> None:
    """The storm's process: ``rate`` requests a second, each reset once sent."""
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) < start + seconds:
        due = start + sent / rate
        if due > now:
            time.sleep(due - now)
        try:
            with socket.create_connection((common.HOST, port), timeout=1.0) as peer:
                peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                target = TARGETS[sent % len(TARGETS)]
                peer.sendall(f"GET {target} HTTP/1.1\r\nHost: {common.HOST}\r\n\r\n".encode())
        except OSError:
            pass  # a full listen queue: the storm goes on
        sent += 1
    print(f"storm: {sent} requests", file=sys.stderr)


def healthz(port: int) -> float:
    """Seconds from connecting to ``/healthz``'s answer."""
    started = time.perf_counter()
    with socket.create_connection((common.HOST, port), timeout=PROBE_TIMEOUT) as probe:
        probe.sendall(f"GET /healthz HTTP/1.1\r\nHost: {common.HOST}\r\n\r\n".encode())
        assert probe.recv(4096).startswith(b"HTTP/1.1 200 ")
    return time.perf_counter() - started


async def fill(port: int, messages: int) -> None:
    base = f"ws://{common.HOST}:{port}/api/v1/stream"
    async with connect(f"{base}/big", max_size=None) as ws:
        await ws.send(json.dumps({"type": "hello", "create": True}))
        await ws.recv()
        for i in range(messages):
            message = {"role": "user", "content": "m" * 7000}
            await ws.send(json.dumps({"type": "message", "id": i, "message": message}))
            await ws.recv()
    for i in range(100):
        async with connect(f"{base}/other-{i}") as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            await ws.recv()


async def one_run(kind: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = (
        compare.before_server(kind, Path(os.environ[compare.BEFORE_TREE_ENV]), tmp, *SAME_FLAGS)
        if kind == compare.BEFORE
        else common.bamboo_server(tmp / "data", tmp / "bamboo.log")
    )
    try:
        port = server.start().port
        await fill(port, args.messages)
        idle = statistics.median([await asyncio.to_thread(healthz, port) for _ in range(5)])
        cpu_before = common.cpu_seconds(server.pid)
        storming = multiprocessing.get_context("fork").Process(
            target=storm, args=(port, args.rate, args.seconds)
        )
        storming.start()
        probes: list[float] = []
        started = time.monotonic()
        while storming.is_alive() or time.monotonic() < started + args.seconds + 2:
            probes.append(await asyncio.to_thread(healthz, port))
            await asyncio.sleep(PROBE_EVERY)
        storming.join()
        cpu = common.cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
    return {
        "kind": kind,
        "idle_ms": idle * 1000,
        "worst_ms": max(probes) * 1000,
        "median_ms": statistics.median(probes) * 1000,
        "probes": len(probes),
        "cpu_ms_per_request": cpu * 1000 / (args.rate * args.seconds),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    kinds = ([compare.BEFORE] if os.environ.get(compare.BEFORE_TREE_ENV) else []) + ["bamboo"]
    runs: list[dict[str, Any]] = []
    for round_ in range(args.rounds):
        for kind in kinds:
            with common.workdir(f"{QUESTION}-{kind}") as tmp:
                run = await one_run(kind, tmp, args)
            runs.append(run)
            print(
                f"round {round_ + 1} {kind:<8} /healthz idle {run['idle_ms']:.1f} ms, during "
                f"the storm worst {run['worst_ms']:.1f} ms, median {run['median_ms']:.1f} ms "
                f"({run['probes']} probes); server CPU {run['cpu_ms_per_request']:.3f} ms "
                "per storm request",
                flush=True,
            )
    if compare.BEFORE in kinds:
        for name, key in (("worst /healthz", "worst_ms"), ("CPU", "cpu_ms_per_request")):
            now = statistics.median(r[key] for r in runs if r["kind"] == "bamboo")
            before = statistics.median(r[key] for r in runs if r["kind"] == compare.BEFORE)
            print(common.ratio_line(QUESTION, f"{name} bamboo/before", now / before, "< 1.0"))
    return {"question": QUESTION, "args": vars(args) | {"json": None}, "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="storm requests a second")
    parser.add_argument("--seconds", type=float, default=8.0, help="the storm's length")
    parser.add_argument("--messages", type=int, default=100, help="7 KB messages in the page")
    parser.add_argument("--rounds", type=int, default=2)
    common.add_common_args(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
