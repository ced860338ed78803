"""A stop with many peers attached, two trees alternated: the server's CPU from SIGTERM
to its exit, the exit's wall time, and when the peers saw their connections end.

A tree that ends each peer's TCP connection behind its close frame (h464) lets the
peers hang up while the server still runs, and each hang-up costs the server the
teardown of that connection (its handler's end included); a tree that leaves the
sockets to the process's exit costs nothing of that. This measures what it adds, on
an idle store (JSONL, fsync) where nothing else holds the stop.

    python -m bench.stop_peer_ends --before /work/wt/base69.shim --runs 3

Each tree runs as ``PYTHONPATH=SHIM`` (a worktree's shim maps ``bamboo_session`` to
it). Printed: per run and tree, CPU s, exit s, peers' last end s, median end s, and
the medians' ratios (tree / before).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.process_setup import raise_open_file_limit

from .common import ROOT, bamboo_server, cpu_seconds, gather_bounded, workdir

CONNECT_CONCURRENCY = 100


async def attached(port: int, session: str, create: bool) -> ClientConnection:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session}"
    ws = await connect(url, open_timeout=60, max_queue=None)
    await ws.send(json.dumps({"type": "hello", "create": create}))
    while json.loads(await asyncio.wait_for(ws.recv(), 60))["type"] != "welcome":
        pass
    return ws


async def ended(ws: ClientConnection, signalled: list[float]) -> tuple[int | None, float]:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
    return ws.close_code, time.monotonic() - signalled[0]


async def one_stop(shim: str, place: Path, sessions: int, viewers: int) -> dict[str, Any]:
    server = bamboo_server(place / "data", place / "server.log", "--shutdown-grace", "5")
    server.env = {**os.environ, "PYTHONPATH": shim}
    server.start()
    assert server.proc is not None
    pid = server.proc.pid
    try:
        firsts = [attached(server.port, f"s{n}", True) for n in range(sessions)]
        peers = await gather_bounded(firsts, CONNECT_CONCURRENCY)
        rest = [
            attached(server.port, f"s{n}", False)
            for n in range(sessions)
            for _ in range(viewers - 1)
        ]
        peers += await gather_bounded(rest, CONNECT_CONCURRENCY)
        signalled = [0.0]
        hearing = [asyncio.ensure_future(ended(ws, signalled)) for ws in peers]
        await asyncio.sleep(0.5)  # the attaches' own work settled
        before = cpu_seconds(pid)
        signalled[0] = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)
        exited = time.monotonic() - signalled[0]
        server.proc.returncode = os.waitstatus_to_exitcode(status)
        heard = await asyncio.gather(*hearing)
    finally:
        server.terminate()
    ends = sorted(at for _, at in heard)
    return {
        "cpu": usage.ru_utime + usage.ru_stime - before,
        "exit": exited,
        "last_end": ends[-1],
        "median_end": statistics.median(ends),
        "closed_1012": sum(code == 1012 for code, _ in heard),
        "peers": len(heard),
        "status": server.proc.returncode,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the base tree's shim directory")
    parser.add_argument("--tree", default=f"{ROOT}.shim", help="this tree's shim directory")
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--viewers", type=int, default=4, help="connections per session")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    raise_open_file_limit()
    trees = {"before": args.before, "tree": args.tree}
    found: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    for number in range(args.runs):
        order = list(trees) if number % 2 == 0 else list(reversed(trees))
        for label in order:
            with workdir(f"stop-ends-{label}") as place:
                result = await one_stop(trees[label], place, args.sessions, args.viewers)
            found[label].append(result)
            print(label, number, {k: round(v, 3) for k, v in result.items()}, flush=True)
    for key in ("cpu", "exit", "last_end", "median_end"):
        medians = {label: statistics.median(r[key] for r in found[label]) for label in trees}
        ratio = medians["tree"] / max(medians["before"], 1e-9)
        both = f"before {medians['before']:.3f}, tree {medians['tree']:.3f}"
        print(f"RATIO {key}: {both}, {ratio:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
