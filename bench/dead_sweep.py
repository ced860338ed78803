"""How long does a survivor take to park the sessions of a Redis instance that died
(persistence/redis/orphans.py), per session?

On a real redis-server (append-only, ``appendfsync always``), in this process: a
"dead" store instance creates ``--sessions`` sessions, makes each ``active`` and
registers one connection in each (presence, a heartbeat of 1 s), then is closed without
leaving them, as a kill leaves them. Once its deadline has passed, a second instance
(heartbeat ``--heartbeat``: its batches are sized by it) runs one sweep of dead
instances, timed: wall time, this process's CPU, and Redis's time in scripts, each per
session parked.

The tree measured is the one ``bamboo_session`` imports (PYTHONPATH: a tree's shim).

    python -m bench.dead_sweep --sessions 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session, SessionState

from .common import HOST, add_common_args, gather_bounded, ratio_line, run, workdir, write_json
from .owed_last_round import script_seconds
from .parked_outage import Redis

QUESTION = "dead_sweep"


async def died(url: str, count: int) -> None:
    """``count`` sessions each with one connection of an instance then closed, as if
    killed: its presence stays, to lapse a heartbeat later."""
    storage: Any = await open_storage(url)  # a RedisStorage: its presence
    try:

        async def one(n: int) -> None:
            session_id = f"s{n}"
            await storage.create_session(Session.new(session_id, now=storage.now()))
            metadata = await storage.update_session_state(session_id, SessionState.ACTIVE)
            await storage.presence.join(session_id, f"c{n}", "client", epoch=metadata.epoch)

        await gather_bounded([one(n) for n in range(count)], 64)
    finally:
        await storage.close()


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis = Redis(work / "redis")
    redis.directory.mkdir()
    redis.start()
    try:
        base = f"redis://{HOST}:{redis.port}/0?prefix=sweep"
        await died(f"{base}&heartbeat=1", args.sessions)
        survivor: Any = await open_storage(f"{base}&heartbeat={args.heartbeat:g}")
        try:
            await asyncio.sleep(1.5)  # the dead instance's 1 s deadline passes
            await survivor.redis.call("CONFIG", "RESETSTAT")
            began, cpu = time.monotonic(), time.process_time()
            parked = await survivor.presence.sweep_dead()
            took, cpu = time.monotonic() - began, time.process_time() - cpu
            scripts = await script_seconds(survivor)
        finally:
            await survivor.close()
    finally:
        redis.stop()
    per = max(parked, 1)
    return {
        "sessions": args.sessions,
        "parked": parked,
        "seconds": round(took, 3),
        "ms_per_session": round(took * 1000 / per, 4),
        "process_cpu_ms_per_session": round(cpu * 1000 / per, 4),
        "redis_script_ms_per_session": round(scripts * 1000 / per, 4),
    }


async def main(args: argparse.Namespace) -> int:
    with workdir("bamboo-dead-sweep-") as work:
        results = await measure(args, work)
    print(json.dumps(results, indent=2))
    print(ratio_line(QUESTION, "parked", results["parked"] / args.sessions, "1.0"))
    write_json(args.json, results)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--heartbeat", type=float, default=30.0, help="the survivor's")
    add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(run(main(parse_args())))
