"""What a local store's clock (persistence/clock.py) costs per time it gives, against
reading the wall clock (``utcnow``): ``stamp`` (once per append call and state write)
and ``now`` (once per look, attach, HTTP read and delivered batch), on the wall
clock's own pace and held ahead of it (a store holding times a day on: since h364 it
runs at half speed there, where it stood still); and, where the tree has it, what the
JSONL store adds to each change it writes lazily (a state move, a touch: since h364
the change's time goes to its clock mark, persistence/jsonl/clock_mark.py, one
``pwrite`` on the loop).

Each figure is the best of ``--rounds`` runs of ``--calls`` calls (``timeit``), in
this process, of the tree it imports (a worktree's through its shim on PYTHONPATH).

``--redis``: the Redis store's clock instead, which is its scripts' (h369: append,
state and touch stamp a session never behind its own ``updated``, one more hash field
read in the script each already makes). A redis-server of its own on a free port (AOF
``everysec``), one session; per script, the best of ``--rounds`` runs of
``--redis-calls`` calls one after the other: the call's round trip from this process
through the store's API, and Redis's own time a call (``INFO commandstats``,
``usec_per_call`` of ``evalsha``, reset before each run). Once with the session at
Redis's clock, once held an hour ahead of it (imported so: the clamp's branch, in a
tree that has it).

Run: ``python -m bench.store_clock_cost [--calls 200000] [--rounds 5]``;
``python -m bench.store_clock_cost --redis [--redis-calls 3000]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import tempfile
import time
import timeit
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.clock import StoreClock
from bamboo_session.protocol.models import AgentEvent, Session, SessionState, utcnow


def best(call: Callable[[], object], calls: int, rounds: int) -> float:
    """Microseconds a call, the best of ``rounds``."""
    return min(timeit.repeat(call, number=calls, repeat=rounds)) / calls * 1e6


def clocks() -> dict[str, StoreClock]:
    ahead = StoreClock()
    ahead.saw(utcnow() + timedelta(days=1))
    return {"at the wall clock": StoreClock(), "held a day ahead": ahead}


def lazy_change(directory: Path) -> Callable[[], object] | None:
    """A stamp and its mark, as a JSONL state move makes them; None before h364."""
    if importlib.util.find_spec("bamboo_session.persistence.jsonl.clock_mark") is None:
        return None
    from bamboo_session.persistence.jsonl.clock_mark import ClockMarkFile

    clock, mark = StoreClock(), ClockMarkFile(directory)
    mark.open()
    return lambda: mark.wrote(clock.stamp())


async def redis_session(storage: Any, session_id: str, ahead: timedelta | None) -> None:
    """A session ``active``, its times ``ahead`` of Redis's clock (None: at it)."""
    await storage.create_session(Session.new(session_id, ttl=3600, now=storage.now()))
    await storage.update_session_state(session_id, SessionState.ACTIVE)
    if ahead is not None:
        seconds, micros = await storage.redis.client.time()
        moment = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros) + ahead
        metadata = await storage.get_metadata(session_id)
        metadata.updated_at = metadata.last_activity_at = moment
        metadata.expires_at = moment + timedelta(seconds=3600)
        await storage.import_metadata(metadata)


def script_calls(storage: Any, session_id: str) -> dict[str, Callable[[int], Awaitable[object]]]:
    """The store's calls that run each script, by the script's name."""
    states = (SessionState.IDLE, SessionState.ACTIVE)
    return {
        "append": lambda _: storage.append_event(session_id, AgentEvent.token("x")),
        "state": lambda i: storage.update_session_state(session_id, states[i % 2]),
        "touch": lambda _: storage.touch(session_id),
    }


async def best_run(
    client: Any, call: Callable[[int], Awaitable[object]], calls: int, rounds: int
) -> tuple[float, float]:
    """The best of ``rounds`` runs: microseconds a call's round trip, and in Redis."""
    trips, inside = [], []
    for _ in range(rounds):
        await client.config_resetstat()
        started = time.perf_counter()
        for i in range(calls):
            await call(i)
        trips.append((time.perf_counter() - started) / calls * 1e6)
        stats = await client.info("commandstats")
        inside.append(float(stats["cmdstat_evalsha"]["usec_per_call"]))
    return min(trips), min(inside)


async def redis_costs(port: int, calls: int, rounds: int) -> None:
    url = f"redis://127.0.0.1:{port}/0?prefix=clock&accept_lossy=true"
    storage: Any = await open_storage(url, cleanup_interval=None)
    try:
        for case, ahead in (("at Redis's clock", None), ("held an hour ahead", timedelta(hours=1))):
            session_id = "ahead" if ahead else "plain"
            await redis_session(storage, session_id, ahead)
            for name, call in script_calls(storage, session_id).items():
                trip, inside = await best_run(storage.redis.client, call, calls, rounds)
                print(f"redis {name}, {case}: {trip:.1f} us a call, {inside:.2f} us in Redis")
            held = (await storage.get_metadata(session_id)).updated_at - utcnow()
            print(f"  its updated_at at the end: {held.total_seconds():+.3f} s from this clock")
    finally:
        await storage.close()


def redis_main(calls: int, rounds: int) -> None:
    from .redis_bad_day import Redis

    with tempfile.TemporaryDirectory() as directory:
        server = Redis(Path(directory), lossy=True)
        server.start()
        try:
            asyncio.run(redis_costs(server.port, calls, rounds))
        finally:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--redis", action="store_true", help="the Redis scripts' costs instead")
    parser.add_argument("--redis-calls", type=int, default=3000)
    args = parser.parse_args()
    if args.redis:
        redis_main(args.redis_calls, args.rounds)
        return
    wall = best(utcnow, args.calls, args.rounds)
    print(f"utcnow: {wall:.2f} us")
    for name, clock in clocks().items():
        for what, call in (("stamp", clock.stamp), ("now", clock.now)):
            cost = best(call, args.calls, args.rounds)
            print(f"{what}, {name}: {cost:.2f} us")
            print(f"RATIO store clock {what} {name}/utcnow = {cost / wall:.3f}")
    with tempfile.TemporaryDirectory() as directory:
        if (change := lazy_change(Path(directory))) is not None:
            cost = best(change, args.calls, args.rounds)
            print(f"stamp and JSONL mark: {cost:.2f} us")
            print(f"RATIO store clock stamp and JSONL mark/utcnow = {cost / wall:.3f}")


if __name__ == "__main__":
    main()
