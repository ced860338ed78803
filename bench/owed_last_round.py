"""How many of the ``disconnected`` states a process owes Redis does a graceful stop's
last round write within its 3 s, at up to the queue's whole bound (65,536)?

bench/parked_outage.py measures the same stop end to end (real peers, Redis stopped
and started), but a ``serve`` process can hold no more peers than its open-file limit
(20,000 here, a hard limit this container cannot raise), so it cannot reach the bound.
Here the queue is filled as an outage leaves it, in this process, on a real
redis-server (append-only, ``appendfsync always``): ``--owed`` sessions stored
``active``, each with one connection of this instance registered in presence and its
leave failed (remembered, left again before the write), each owed by a retired actor
(server/owed_states.py). Then ``OwedStates.close()``, the stop's last round (3 s at
most), and what it wrote, with ``--rounds`` also one normal round on a second store
(no bound: how long it takes to write them all).

The tree measured is the one ``bamboo_session`` imports: run it with PYTHONPATH set to
each tree's import shim, for a before and an after (the calls used are in both).

    python -m bench.owed_last_round --owed 65536
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server.owed_states import OwedStates
from bamboo_session.server.presence import shared_presence

from .common import HOST, add_common_args, gather_bounded, ratio_line, run, workdir, write_json
from .parked_outage import Redis

QUESTION = "owed_last_round"


def nothing_live(session_id: str) -> None:
    return None


async def owing(url: str, count: int) -> tuple[Any, OwedStates]:
    """A store and its owed states: ``count`` sessions, as an outage leaves them."""
    storage = await open_storage(url)
    presence = shared_presence(storage, lambda notice: None)
    assert presence is not None

    async def one(n: int) -> tuple[str, str]:
        session_id = f"s{n}"
        await storage.create_session(Session.new(session_id, now=storage.now()))
        metadata = await storage.update_session_state(session_id, SessionState.ACTIVE)
        await presence.store.join(session_id, f"c{n}", "client", epoch=metadata.epoch)
        return session_id, metadata.epoch

    made = await gather_bounded([one(n) for n in range(count)], 64)
    owed = OwedStates(storage, presence, nothing_live)
    owed.retry_every = 3600.0  # no round but the one measured
    for n, (session_id, epoch) in enumerate(made):
        presence.failed_leaves.add(session_id, [(f"c{n}", "client")], epoch)
        owed.owe(session_id, epoch)
    return storage, owed


async def script_seconds(storage: Any) -> float:
    """Seconds Redis spent running scripts since its stats were reset."""
    stats = await storage.redis.call("INFO", "commandstats")
    usec = sum(int(v["usec"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))
    return usec / 1e6


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis = Redis(work / "redis")
    redis.directory.mkdir()
    redis.start()
    results: dict[str, Any] = {"owed": args.owed}
    try:
        url = f"redis://{HOST}:{redis.port}/0?prefix=stop&heartbeat=30"
        storage, owed = await owing(url, args.owed)
        try:
            await storage.redis.call("CONFIG", "RESETSTAT")
            with capture_logs() as logs:
                began, cpu = time.monotonic(), time.process_time()
                await owed.close()
                took, cpu = time.monotonic() - began, time.process_time() - cpu
            (line,) = [e for e in logs if str(e["event"]).endswith(" at stop")]
            fields = {k: v for k, v in line.items() if k not in ("log_level", "then")}
            results["stop"] = {"seconds": round(took, 2), **fields}
            # Where the time went: this process's CPU, and Redis's in its scripts.
            results["stop"]["process_cpu_s"] = round(cpu, 2)
            results["stop"]["redis_script_s"] = round(await script_seconds(storage), 2)
        finally:
            await storage.close()
        if args.rounds:
            url = f"redis://{HOST}:{redis.port}/0?prefix=round&heartbeat=30"
            storage, owed = await owing(url, args.owed)
            try:
                began = time.monotonic()
                written = await owed.write_owed()
                took = time.monotonic() - began
                results["round"] = {"seconds": round(took, 2), "written": written}
                await owed.close()
            finally:
                await storage.close()
    finally:
        redis.stop()
    return results


async def main(args: argparse.Namespace) -> int:
    with workdir("bamboo-owed-last-round-") as work:
        results = await measure(args, work)
    print(json.dumps(results, indent=2))
    stop = results["stop"]
    # Against what the stop owed, not what was asked: the queue's byte bound may hold fewer.
    written_share = stop["written"] / max(stop["owed"], 1)
    print(ratio_line(QUESTION, "written_by_the_stop", written_share, "1.0"))
    write_json(args.json, results)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--owed", type=int, default=65_536, help="states owed at the stop")
    parser.add_argument("--rounds", action="store_true", help="and one normal round after")
    add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(run(main(parse_args())))
