"""The JSONL store alone under the issue's open loop, without the server: ``--sessions``
tasks in one process, each appending one message at a time at Poisson times
(``--rate`` events/s in all), every append awaited (fsync, the WAL and its helper, as
served). Printed: appends, group commits and appends per commit, the appends' latency
(p50, p90, p99) and the CPU per append of the process and of its sync helper. What
the server's open loop (bench/latency.py) measures of the store, with no websockets,
actors or viewers to share the machine with, so that a change of the store's commit
cycle shows apart from them.

    python -m bench.store_open_loop --rate 2000 --sessions 200 --seconds 8
    python -m bench.store_open_loop --rate 500 --sessions 100 --commit-window 0.002
    python -m bench.store_open_loop --rate 2000 --sessions 200 --busy-window 0
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import uvloop

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl.config import BUSY_WINDOW
from bamboo_session.protocol.models import Message, Session


async def run(args: argparse.Namespace, base: Path) -> str:
    store = await JsonlStorage.open(
        JsonlStorageConfig(
            base,
            durability="fsync",
            commit_window=args.commit_window,
            busy_window=args.busy_window,
        )
    )
    sessions = [f"s{i}" for i in range(args.sessions)]
    for session_id in sessions:
        await store.create_session(Session.new(session_id))
        for _ in range(2):  # its log open, the helper up
            await store.append_message(session_id, Message.user("m"))
    latencies: list[float] = []
    end = time.monotonic() + args.seconds

    async def appender(index: int) -> None:
        draw = random.Random(index)
        while time.monotonic() < end:
            await asyncio.sleep(draw.expovariate(args.rate / args.sessions))
            started = time.perf_counter()
            await store.append_message(sessions[index], Message.user("m"))
            latencies.append(time.perf_counter() - started)

    syncer = store._writer._syncer
    helper = time.clock_gettime(_cpu_clock(syncer.pid)) if syncer else 0.0
    batches, cpu = store._writer.batches, time.process_time()
    await asyncio.gather(*(appender(i) for i in range(args.sessions)))
    cpu, batches = time.process_time() - cpu, store._writer.batches - batches
    helper = time.clock_gettime(_cpu_clock(syncer.pid)) - helper if syncer else 0.0
    await store.close()
    latencies.sort()

    def ms(quantile: float) -> float:
        return latencies[int(quantile * (len(latencies) - 1))] * 1000

    count = len(latencies)
    return (
        f"{count} appends, {batches} commits ({count / batches:.2f} a commit), "
        f"p50 {ms(0.5):.2f} ms, p90 {ms(0.9):.2f} ms, p99 {ms(0.99):.2f} ms, "
        f"CPU {cpu / count * 1e6:.1f} us an append, its sync helper's "
        f"{helper / count * 1e6:.1f}"
    )


def _cpu_clock(pid: int) -> int:
    """The kernel's CPU clock of process ``pid`` (clock_getcpuclockid(3))."""
    return ((~pid) << 3) | 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--commit-window", type=float, default=0.0, help="the store's commit_window, seconds"
    )
    parser.add_argument(
        "--busy-window", type=float, default=BUSY_WINDOW, help="the store's busy_window, seconds"
    )
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bamboo-store-open-loop-") as tmp:
        print(uvloop.run(run(args, Path(tmp))))


if __name__ == "__main__":
    main()
