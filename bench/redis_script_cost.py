"""What the Redis store's writing scripts cost inside Redis: this tree's against another
tree's, interleaved in one redis-server, so that a neighbour's load falls on both
(h369: ``append.lua``, ``state.lua`` and ``touch.lua`` stamp a session never behind
its own ``updated``, one more field in the ``HMGET`` each makes anyway).

A redis-server of its own on a free port (AOF ``everysec``), one store opened by the
tree this process imports (a worktree's through its shim on PYTHONPATH). Per case, two
sessions: one written by this tree's scripts, one by the other's (``--against``: that
tree's ``persistence/redis`` folder; without it, this tree's against itself, which
shows the noise). Call ``i`` of a script goes to each session in turn, the first one
alternating. Each call's time in Redis is read from Redis's slow log (every call
logged); per script and tree, the median and the mean of the fastest 90 % (a call a
neighbour's process preempted is among the slowest tenth), and their ratio, for each
of ``--rounds`` runs of ``--calls`` calls a tree. Cases: the sessions at Redis's clock,
and held an hour ahead of it (imported so: the clamp's branch, in a tree that has it;
a tree without it stamps Redis's ``TIME`` at its first write, and then is at Redis's
clock).

Run: ``PYTHONPATH=<shim> python -m bench.redis_script_cost --against
<other tree>/persistence/redis [--calls 5000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis import scripts
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

from .redis_bad_day import Redis

SCRIPTS = ("append", "state", "touch")
CASES = (("at Redis's clock", None), ("held an hour ahead", timedelta(hours=1)))
Call = Callable[[int], Awaitable[object]]


def scripts_of(folder: Path) -> dict[str, scripts.Script]:
    """The scripts measured, as the tree in ``folder`` has them."""
    common = (folder / "common.lua").read_bytes()
    return {
        name: scripts.Script(name, common + (folder / f"{name}.lua").read_bytes())
        for name in SCRIPTS
    }


async def session_held(storage: Any, session_id: str, ahead: timedelta | None) -> None:
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


def calls_of(storage: Any, session_id: str) -> dict[str, Call]:
    """The store's calls that run each script, by the script's name."""
    states = (SessionState.IDLE, SessionState.ACTIVE)
    return {
        "append": lambda _: storage.append_event(session_id, AgentEvent.token("x")),
        "state": lambda i: storage.update_session_state(session_id, states[i % 2]),
        "touch": lambda _: storage.touch(session_id),
    }


async def run_by(tree: dict[str, scripts.Script], call: Call, i: int) -> None:
    """One call, its scripts the tree's (the store looks its script up as it starts)."""
    held = dict(scripts.SCRIPTS)
    scripts.SCRIPTS.update(tree)
    try:
        await call(i)
    finally:
        scripts.SCRIPTS.update(held)


def summary(durations: list[int]) -> tuple[float, float]:
    """Median, and the mean of the fastest 90 %, microseconds."""
    fastest = sorted(durations)[: max(1, len(durations) * 9 // 10)]
    return statistics.median(durations), statistics.fmean(fastest)


async def one_run(
    client: Any, trees: list[tuple[dict[str, scripts.Script], Call]], name: str, calls: int
) -> list[tuple[float, float]]:
    """Per tree, the (median, fastest-90 % mean) of its ``calls`` calls of ``name``."""
    await client.slowlog_reset()
    for i in range(calls):
        for tree, call in trees if i % 2 else trees[::-1]:
            await run_by(tree, call, i)
    logged = await client.slowlog_get(2 * calls + 1000)
    durations: dict[str, list[int]] = {tree[name].sha: [] for tree, _ in trees}
    for entry in logged:
        words = bytes(entry["command"]).split(b" ", 2)
        # A script that writes nothing is called by EVALSHA_RO (scripts.READING_SCRIPTS).
        if words[0].upper() in (b"EVALSHA", b"EVALSHA_RO") and words[1].decode() in durations:
            durations[words[1].decode()].append(int(entry["duration"]))
    return [summary(durations[tree[name].sha]) for tree, _ in trees]


async def measure(port: int, against: dict[str, scripts.Script], calls: int, rounds: int) -> None:
    url = f"redis://127.0.0.1:{port}/0?prefix=cost&accept_lossy=true"
    storage: Any = await open_storage(url, cleanup_interval=None)
    client = storage.redis.client
    await client.config_set("slowlog-log-slower-than", 0)
    await client.config_set("slowlog-max-len", 2 * calls + 1000)
    ours = {name: scripts.SCRIPTS[name] for name in SCRIPTS}
    try:
        for case, ahead in CASES:
            trees = []
            for label, tree in (("ours", ours), ("theirs", against)):
                session_id = f"{label}-{'ahead' if ahead else 'plain'}"
                await session_held(storage, session_id, ahead)
                trees.append((tree, calls_of(storage, session_id)))
            for name in SCRIPTS:
                for run in range(rounds):
                    chosen = [(tree, calls[name]) for tree, calls in trees]
                    (ours_median, ours_mean), (their_median, their_mean) = await one_run(
                        client, chosen, name, calls
                    )
                    print(
                        f"{name}, {case}, run {run + 1}: this tree median {ours_median:.0f} us, "
                        f"fastest 90 % {ours_mean:.2f} us; against {their_median:.0f} us, "
                        f"{their_mean:.2f} us; RATIO this/against {ours_mean / their_mean:.3f}",
                        flush=True,
                    )
    finally:
        await storage.close()


Measure = Callable[[int, dict[str, scripts.Script], int, int], Coroutine[Any, Any, None]]


def run_against(
    description: str,
    scripts_in: Callable[[Path], dict[str, scripts.Script]],
    measure_in: Measure,
    default_calls: int,
) -> None:
    """A Redis script bench's command line: its own redis-server, this tree's scripts
    (``scripts_in``) against another tree's, or against themselves under other SHAs,
    the noise alone, when no ``--against`` is given."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--against", type=Path, help="another tree's persistence/redis")
    parser.add_argument("--calls", type=int, default=default_calls)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    here = Path(scripts.__file__).parent
    against = scripts_in(args.against or here)
    if args.against is None:
        against = {n: scripts.Script(n, s.source + b"\n-- again\n") for n, s in against.items()}
    with tempfile.TemporaryDirectory() as directory:
        server = Redis(Path(directory), lossy=True)
        server.start()
        try:
            asyncio.run(measure_in(server.port, against, args.calls, args.rounds))
        finally:
            server.kill()


def main() -> None:
    run_against(__doc__.split("\n\n")[0], scripts_of, measure, 5000)


if __name__ == "__main__":
    main()
