"""Question 3, connections: how much memory does an idle connection cost, and a parked
session? And how much server CPU does a connection cost to open?

Idle connections: C viewers attached over C/10 sessions, nobody publishing. The server's
RSS is read once one viewer per session is attached (so the sessions' own cost is
already in) and again after the other viewers; the difference over their number is the
marginal RSS of one idle attached connection. The baseline relay gets the same
subscribers in the same invocation. Goal <= 20 KB each. File-descriptor limits are
raised in the driver and in both servers. The server's CPU while the other viewers
connect, over their number, is the CPU of one connect: for Bamboo the upgrade,
``hello``, ``welcome`` and the ``presence`` frames its session's other viewers get; for
the relay, the upgrade.

Parked sessions: a child process runs a SessionManager in-process (the server's own
Python API, JSONL storage without fsync), creates K sessions, then attaches and detaches
each once, so K actors sit parked with their state in memory (retention and
max_sessions large). RSS after creating (the storage's record of each session, which
exists whether or not the session is live) and after parking: the difference over K is
the RSS of one parked session. Goal <= 4 KB each.

    python -m bench.connections                   # 1,000 connections, 10,000 parked
    BENCH_FULL=1 python -m bench.connections      # 10,000 connections, 100,000 parked
    python -m bench.connections --connections 40 --parked 200 --settle 0.2  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common
from .peers import bamboo_attach, open_ws

PER_SESSION = 10
CONNECT_CONCURRENCY = 100
SETTLE = 1.0  # seconds to let the server finish its work before reading RSS (--settle)


async def keep_reading(ws: ClientConnection) -> None:
    """An idle viewer still reads what comes (presence frames when others join)."""
    while True:
        await ws.recv(decode=False)


async def settled_rss(pid: int, settle: float) -> int:
    await asyncio.sleep(settle)
    return common.rss_kib(pid)


async def measure_connections(
    kind: str, server: common.ServerProcess, connections: int, settle: float
) -> dict[str, Any]:
    sessions = max(1, connections // PER_SESSION)
    stamp = time.monotonic_ns()
    names = [f"conn-{stamp}-{i}" for i in range(sessions)]
    base = f"ws://{common.HOST}:{server.port}"

    async def attach(name: str, first: bool) -> ClientConnection:
        if kind == "baseline":
            return await open_ws(server.url(f"/sub/{name}"), subprotocol=False)
        ws, _ = await bamboo_attach(base, name, create=first)
        return ws

    rss_empty = await settled_rss(server.pid, settle)
    firsts = await common.gather_bounded([attach(n, True) for n in names], CONNECT_CONCURRENCY)
    readers = [asyncio.ensure_future(keep_reading(ws)) for ws in firsts]
    rss_sessions = await settled_rss(server.pid, settle)
    rest_names = [names[i % sessions] for i in range(connections - sessions)]
    started, cpu_before = time.perf_counter(), common.cpu_seconds(server.pid)
    rest = await common.gather_bounded([attach(n, False) for n in rest_names], CONNECT_CONCURRENCY)
    connect_seconds = time.perf_counter() - started
    connect_cpu = common.cpu_seconds(server.pid) - cpu_before
    readers += [asyncio.ensure_future(keep_reading(ws)) for ws in rest]
    rss_all = await settled_rss(server.pid, settle)
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await common.gather_bounded([ws.close() for ws in [*firsts, *rest]], CONNECT_CONCURRENCY)
    marginal = (rss_all - rss_sessions) / max(1, len(rest))
    result = {
        "kind": kind,
        "connections": connections,
        "sessions": sessions,
        "rss_empty_kib": rss_empty,
        "rss_one_per_session_kib": rss_sessions,
        "rss_all_kib": rss_all,
        "kib_per_connection": marginal,
        "kib_per_connection_with_sessions": (rss_all - rss_empty) / connections,
        "connects_per_s": len(rest) / connect_seconds if connect_seconds else 0.0,
        # Bamboo's connect is the upgrade, hello and welcome, and presence to the
        # session's other viewers; the relay's, the upgrade alone.
        "cpu_us_per_connect": connect_cpu / max(1, len(rest)) * 1e6,
    }
    print(
        f"{kind:9s} {connections} idle connections over {sessions} sessions: "
        f"{marginal:6.1f} KiB per connection "
        f"({result['kib_per_connection_with_sessions']:.1f} KiB counting the sessions), "
        f"RSS {rss_empty} -> {rss_sessions} -> {rss_all} KiB, "
        f"{result['connects_per_s']:.0f} connects/s, "
        f"server CPU {result['cpu_us_per_connect']:.0f} us per connect",
        flush=True,
    )
    return result


def measure_parked(parked: int, data_dir: Path, settle: float) -> dict[str, Any]:
    """Runs the parked-session measurement in a fresh process and returns its figures."""
    child = ["--parked-child", str(parked), str(data_dir), "--settle", str(settle)]
    out = subprocess.run(
        [sys.executable, "-m", "bench.connections", *child],
        cwd=common.ROOT,
        capture_output=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    print(
        f"parked    {parked} sessions: {result['kib_per_parked']:.2f} KiB per parked session; "
        f"the stored record of a session (live or not) {result['kib_per_stored']:.2f} KiB; "
        f"RSS {result['rss_start_kib']} -> {result['rss_created_kib']} -> "
        f"{result['rss_parked_kib']} KiB",
        flush=True,
    )
    return result


async def parked_child(parked: int, data_dir: Path, settle: float) -> dict[str, Any]:
    """In the child: create, then park, ``parked`` sessions; RSS at each step."""
    from bamboo_session.persistence import MemoryStorage
    from bamboo_session.server.manager import SessionManager, SessionManagerConfig

    # The in-memory store: what is measured is the live side (parked actors), and the
    # store's own record of a session beside it.
    storage = await MemoryStorage.open()
    config = SessionManagerConfig(
        idle_timeout=1e6, disconnect_retention=1e6, max_sessions=parked + 10
    )
    manager = SessionManager(config, storage)
    manager.start()
    try:
        ids = [f"park-{i}" for i in range(parked)]
        gc.collect()
        rss_start = common.rss_kib_self()
        for sid in ids:
            await manager.create_session(session_id=sid)
        gc.collect()
        await asyncio.sleep(settle / 2)
        rss_created = common.rss_kib_self()
        for sid in ids:
            receiver = await manager.connect_session(sid)
            await manager.disconnect_session(sid, receiver.connection_id)
            del receiver
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            live = [manager.live_actor(sid) for sid in ids]
            if all(a is not None and not a.room.outboxes and not len(a.inbox) for a in live):
                break
            await asyncio.sleep(0.2)
        else:
            raise RuntimeError("sessions did not park in time")
        gc.collect()
        await asyncio.sleep(settle / 2)
        rss_parked = common.rss_kib_self()
    finally:
        await manager.close(grace=30)
        await storage.close()
    return {
        "parked": parked,
        "rss_start_kib": rss_start,
        "rss_created_kib": rss_created,
        "rss_parked_kib": rss_parked,
        "kib_per_stored": (rss_created - rss_start) / parked,
        "kib_per_parked": (rss_parked - rss_created) / parked,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    with common.workdir("connections") as tmp:
        runs: dict[str, Any] = {}
        baseline = common.baseline_server(tmp / "baseline.log").start()
        try:
            runs["baseline"] = await measure_connections(
                "baseline", baseline, args.connections, args.settle
            )
        finally:
            baseline.terminate()
        bamboo = common.bamboo_server(tmp / "data", tmp / "bamboo.log").start()
        try:
            runs["bamboo"] = await measure_connections(
                "bamboo", bamboo, args.connections, args.settle
            )
        finally:
            bamboo.terminate()
        parked = await asyncio.to_thread(measure_parked, args.parked, tmp / "parked", args.settle)
    per_conn = runs["bamboo"]["kib_per_connection"]
    ratio = per_conn / max(runs["baseline"]["kib_per_connection"], 1e-9)
    # Goals are in KB; RSS comes in KiB.
    print(common.ratio_line("connections", "KB per connection bamboo/baseline", ratio, "-"))
    cpu_ratio = runs["bamboo"]["cpu_us_per_connect"] / max(
        runs["baseline"]["cpu_us_per_connect"], 1e-9
    )
    print(
        common.ratio_line("connections", "server CPU per connect bamboo/baseline", cpu_ratio, "-")
    )
    print(
        common.ratio_line(
            "connections", "KB per connection bamboo/20KB", per_conn * 1.024 / 20, "<= 1.0"
        )
    )
    print(
        common.ratio_line(
            "connections",
            "KB per parked session/4KB",
            parked["kib_per_parked"] * 1.024 / 4,
            "<= 1.0",
        )
    )
    return {"question": "connections", "runs": runs, "parked": parked, "ratio": ratio}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000 if full else 1_000)
    parser.add_argument("--parked", type=int, default=100_000 if full else 10_000)
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE,
        help="seconds the server is left to finish its work before each RSS reading",
    )
    parser.add_argument("--parked-child", nargs=2, metavar=("COUNT", "DATA_DIR"), help="internal")
    common.add_common_args(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.parked_child:
        count, directory = arguments.parked_child
        figures = common.run(parked_child(int(count), Path(directory), arguments.settle))
        print(json.dumps(figures), flush=True)
    else:
        result = common.run(main(arguments))
        common.write_json(arguments.json, result)
