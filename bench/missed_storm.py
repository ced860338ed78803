"""Issue 14, the store side of a reconnect storm: after a restart, the viewers of every
session resume at once, each having missed events that are only in the store.

S sessions of E stored events, V viewers each. The server restarts (SIGTERM, then a new
process on the same port and data directory: every ring is empty); then all S x V
viewers resume at once, each from seq ``E - missed``, and must get exactly the missed
events, once, in order. Reported: the time until the last viewer has them all, the new
server's CPU seconds for it (from /proc, less sensitive to the neighbours than wall
time), and how many replay pages it read from the store (bamboo_replay_store_reads_total:
one per session is the goal, V per session is what a server that reads once per resumer
does). ``BENCH_BEFORE=<checkout>`` runs an older tree's server in the same invocation
(bench/compare.py), for ratios against it.

    python -m bench.missed_storm                    # 100 sessions x 5 viewers
    BENCH_FULL=1 python -m bench.missed_storm       # 1,000 sessions x 5 viewers
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from bamboo_session.server.process_setup import raise_open_file_limit

from . import common, compare
from .peers import bamboo_attach, decode_frame, token_frame
from .storm_worker import with_retries

CONNECT_CONCURRENCY = 100
RUN_TIMEOUT = 300.0


async def fill(base: str, session_ids: list[str], events: int) -> list[str]:
    """Every session created with ``events`` events; their epochs."""

    async def one(session_id: str) -> str:
        ws, welcome = await bamboo_attach(base, session_id, role="agent", create=True)
        async with ws:
            for index in range(events):
                await ws.send(token_frame(index), text=True)
            acks = 0
            while acks < events:
                acks += decode_frame(await ws.recv(decode=False)).type == "ack"
        return welcome.epoch

    return await common.gather_bounded([one(s) for s in session_ids], 50)


async def resume(
    base: str, session_id: str, epoch: str, after: int, gate: asyncio.Semaphore
) -> tuple[list[int], float]:
    """One viewer: the seqs it was replayed, and when it had them all."""
    ws, welcome = await with_retries(
        lambda: bamboo_attach(base, session_id, last_seq=after, epoch=epoch), gate
    )
    seqs: list[int] = []
    async with ws:
        while len(seqs) < welcome.replay:
            frame = decode_frame(await ws.recv(decode=False))
            if frame.type == "event":
                seqs.append(frame.seq)
    return seqs, time.perf_counter()


def store_reads(port: int) -> int | None:
    """The server's bamboo_replay_store_reads_total (None on a server without it)."""
    with urllib.request.urlopen(f"http://{common.HOST}:{port}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("bamboo_replay_store_reads_total "):
                return int(float(line.split()[1]))
    return None


async def storm(kind: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    server = (
        compare.server(kind, tmp)
        if kind == compare.BEFORE
        else common.bamboo_server(tmp / "data", tmp / "bamboo.log")
    )
    ids = [f"missed-{i}" for i in range(args.sessions)]
    after = args.events - args.missed
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            port = server.start().port
            base = f"ws://{common.HOST}:{port}"
            epochs = await fill(base, ids, args.events)
            await asyncio.to_thread(server.terminate)
            await asyncio.to_thread(server.start, port)  # same data: every ring empty
            cpu_before = common.cpu_seconds(server.pid)
            gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
            started = time.perf_counter()
            viewers = await asyncio.gather(
                *(
                    resume(base, session_id, epoch, after, gate)
                    for session_id, epoch in zip(ids, epochs, strict=True)
                    for _ in range(args.viewers)
                )
            )
            all_back = max(done for _, done in viewers) - started
            cpu = common.cpu_seconds(server.pid) - cpu_before
            reads = await asyncio.to_thread(store_reads, port)
    finally:
        server.terminate()
    wanted = list(range(after + 1, args.events + 1))
    return {
        "kind": kind,
        "viewers": len(viewers),
        "exact": sum(seqs == wanted for seqs, _ in viewers),
        "lost": sum(len(set(wanted) - set(seqs)) for seqs, _ in viewers),
        "duplicated": sum(len(seqs) - len(set(seqs)) for seqs, _ in viewers),
        "all_back_s": all_back,
        "server_cpu_s": cpu,
        "store_reads": reads,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    raise_open_file_limit()
    kinds = ([compare.BEFORE] if os.environ.get(compare.BEFORE_TREE_ENV) else []) + ["bamboo"]
    runs: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        with common.workdir(f"missed-{kind}") as tmp:
            run = runs[kind] = await storm(kind, tmp, args)
        print(
            f"{kind:<8}  {run['viewers']} viewers of {args.sessions} sessions, "
            f"{args.missed} events missed each: {run['exact']} exact, {run['lost']} lost, "
            f"{run['duplicated']} duplicated; all back {run['all_back_s']:.2f} s after the "
            f"restart; server CPU {run['server_cpu_s']:.2f} s; replay pages read from the "
            f"store: {run['store_reads']}",
            flush=True,
        )
    bamboo = runs["bamboo"]
    reads = bamboo["store_reads"] or 0
    print(common.ratio_line("missed", "store reads/sessions", reads / args.sessions, "= 1.0"))
    print(
        common.ratio_line("missed", "exact/viewers", bamboo["exact"] / bamboo["viewers"], "= 1.0")
    )
    if compare.BEFORE in runs:
        before = runs[compare.BEFORE]
        for name, key in (("time to all back", "all_back_s"), ("server CPU", "server_cpu_s")):
            value = bamboo[key] / max(before[key], 1e-9)
            print(common.ratio_line("missed", f"{name} bamboo/before", value, "< 1.0"))
    return {"question": "missed_storm", "args": vars(args) | {"json": None}, "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    full = common.full_mode()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1_000 if full else 100)
    parser.add_argument("--viewers", type=int, default=5, help="viewers per session")
    parser.add_argument("--events", type=int, default=40, help="events stored per session")
    parser.add_argument("--missed", type=int, default=30, help="events each viewer missed")
    common.add_common_args(parser)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
