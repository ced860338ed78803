"""Question: does a crash ever lose, duplicate or reorder an acknowledged event?

A server subprocess (``python -m bamboo_session.server serve``) on the store under test
(``--store jsonl``, the default: the embedded JSONL store, durability ``fsync``;
``sqlite``: one SQLite file, durability ``fsync``; ``redis``: a redis-server of the
soak's own with ``appendonly yes``, ``appendfsync always``, which stays up while the
Bamboo server is killed; see bench/crash_stores.py) takes events from several
publishers on two sessions while one reader per session follows live. At a random
instant once they all attached (their hellos answered), the server gets SIGKILL (no
shutdown, no flush, no checkpoint); it is restarted on the same store, publishers
reconnect and re-send every event not acknowledged yet with the same idempotency key,
readers resume with ``last_seq`` + ``epoch``. After the last cycle everything pending
is retried, the server is stopped with SIGTERM, and what the store holds is read back
(JSONL: from its files; SQLite and Redis: through the store's own API) and checked:

- every acknowledged event is stored exactly once, at the ``seq`` it was acked with;
- each publisher's events are stored in the order it sent them;
- the log is ``seq`` 1..N with no gap (JSONL: every line and checkpoint parses, no
  torn last line);
- each reader saw 1..N exactly once, in order, across all the crashes;
- every start came up, and the server's log holds no error and no traceback.

Those cycles last well under a second, far from the JSONL WAL's segment retirement (a
segment is retired, its logs synced and it deleted, after 30 s). So on JSONL
``--wal-cycles N`` adds N cycles on a server whose WAL retires segments after
``--wal-segment-age`` seconds (0.2 by default), each lasting a few of those ages, so
that kills land before, during and after retirements; the soak watches the WAL
directory and reports how many segments it saw retired (``wal_segments_retired``).

Run: ``python -m bench.crash_soak --cycles 50 --wal-cycles 20``, or
``python -m bench.crash_soak --store sqlite --cycles 30`` (tests/test_crash.py runs a
few cycles of each). ``--store redis --instances N`` runs N servers on the one
redis-server instead, clients reconnecting to any of them, and kills one or two at a
time while the others serve (bench/crash_cluster.py). ``--commit-window S`` runs the
JSONL store with that commit window (all cycles, the WAL ones too). ``--durability os``
runs the JSONL or SQLite store acknowledging once written, not synced (a SIGKILL leaves
the page cache, so it must lose nothing either): ``python -m bench.crash_soak
--durability os --cycles 70`` (no WAL cycles: at ``os`` the JSONL store keeps no WAL).
Exit status 0 when every check holds; the figures go to stdout as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from .crash_checks import SESSIONS, check, log_problems, logged_stores, report
from .crash_clients import LOST, Publisher, Reader, follow, publish, settle
from .crash_cluster import soak_instances
from .crash_stores import KINDS, open_soak_store
from .soak_server import Server

# How long a cycle waits for its clients to attach before its random instant starts:
# a bound against a server that never answers, not a measure.
ATTACH_TIMEOUT = 30.0


class WalWatch:
    """How many WAL segments appeared in the data directory while the server ran, and
    how many went away (retired: their logs synced, then deleted), polled as the soak
    runs. (Counted as they come and go: a restarted server may reuse a number.)"""

    def __init__(self, data_dir: Path) -> None:
        self.wal_dir = data_dir / "wal"
        self.seen = 0
        self.retired = 0

    def segments(self) -> set[str]:
        try:
            return {p.name for p in self.wal_dir.iterdir() if p.name.endswith(".wal")}
        except FileNotFoundError:
            return set()

    async def watch(self, seconds: float, every: float = 0.02) -> None:
        deadline = time.monotonic() + seconds
        previous = self.segments()
        self.seen += len(previous)
        while time.monotonic() < deadline:
            await asyncio.sleep(every)
            now = self.segments()
            self.retired += len(previous - now)
            self.seen += len(now - previous)
            previous = now


async def run_cycle(
    server: Server,
    pubs: list[Publisher],
    readers: list[Reader],
    run_for: float,
    wal: WalWatch | None = None,
) -> None:
    """Readers attach, then publishers; the server is killed ``run_for`` seconds after
    the last of them attached. Counted from the start instead, a loaded machine (where
    a fresh server takes longer than a whole cycle to answer a hello) killed it before
    anyone published, in every cycle: the soak then checked nothing."""
    # Readers first, so that they see live events too.
    tasks = await attached([partial(follow, server, reader) for reader in readers])
    tasks += await attached([partial(publish, server, pub) for pub in pubs])
    if wal is not None:
        await wal.watch(run_for)
    else:
        await asyncio.sleep(run_for)
    server.kill()
    done, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    for task in done:
        error = task.exception()
        if error is not None and not isinstance(error, LOST):
            raise error


async def attached(
    clients: list[Callable[..., Coroutine[Any, Any, None]]], within: float = ATTACH_TIMEOUT
) -> list[asyncio.Task[None]]:
    """Starts each client (given, as ``attached``, the event it sets once the server
    answered its hello) and returns their tasks once each one attached or ended (a
    server it could not reach), or ``within`` seconds passed."""
    loop = asyncio.get_running_loop()
    started = []
    for client in clients:
        ready = asyncio.Event()
        started.append((asyncio.create_task(client(attached=ready)), ready))
    deadline = loop.time() + within
    for task, ready in started:
        waiting = asyncio.create_task(ready.wait())
        left = max(deadline - loop.time(), 0.0)
        await asyncio.wait({task, waiting}, timeout=left, return_when=FIRST_COMPLETED)
        waiting.cancel()
    return [task for task, _ in started]


async def soak(
    work: Path,
    cycles: int,
    publishers: int = 4,
    seed: int | None = None,
    wal_cycles: int = 0,
    wal_segment_age: float = 0.2,
    store: str = "jsonl",
    instances: int = 1,
    commit_window: float = 0.0,
    durability: str = "fsync",
) -> dict[str, Any]:
    """Runs ``cycles`` kill-and-restart cycles on ``store`` (files in ``work``), then (on
    JSONL) ``wal_cycles`` on a server whose WAL retires segments after
    ``wal_segment_age`` seconds, each lasting 2 to 5 of those, then checks everything;
    the figures, with ``problems`` empty when every check held. With ``instances`` > 1
    (Redis only), that many servers on the one store (bench/crash_cluster.py)."""
    if instances > 1:
        if store != "redis":
            raise ValueError("several instances share a Redis store only")
        return await soak_instances(work, cycles, instances, publishers, seed)
    if wal_cycles and (store != "jsonl" or durability != "fsync"):
        raise ValueError("WAL cycles are for the JSONL store at durability fsync")
    rng = random.Random(seed)
    under_test = open_soak_store(store, work, commit_window, durability)
    server = under_test.server(work / "server.log")
    try:
        pubs = [Publisher(f"p{i}", SESSIONS[i % len(SESSIONS)]) for i in range(publishers)]
        readers = [Reader(s) for s in SESSIONS]
        wal = WalWatch(server.data_dir)
        started = time.monotonic()
        for _ in range(cycles):
            server.start()
            await run_cycle(server, pubs, readers, rng.uniform(0.05, 0.4))
        server.wal_segment_age = wal_segment_age
        for _ in range(wal_cycles):
            server.start()
            run_for = wal_segment_age * rng.uniform(2.0, 5.0)
            await run_cycle(server, pubs, readers, run_for, wal)
        server.wal_segment_age = None
        # The last start: retry everything pending, let readers catch up, stop cleanly.
        server.start()
        await settle(server, pubs, readers, 60)
        status = server.stop()
        problems = await check(under_test, pubs, readers)
    finally:
        server.kill()  # if a step failed while it ran
        under_test.close()
    if status != 0:
        problems.append(f"server exited {status} on SIGTERM")
    problems += log_problems(server.log_path)
    if wal_cycles and not wal.retired:
        problems.append(f"no WAL segment was retired in {wal_cycles} cycles")
    return {
        "store": store,
        "cycles": cycles,
        "wal_cycles": wal_cycles,
        "wal_segment_age": wal_segment_age if wal_cycles else None,
        "commit_window": commit_window,
        "durability": durability,
        "stores_started": sorted(set(logged_stores(server.log_path))),
        "wal_segments_seen": wal.seen,
        "wal_segments_retired": wal.retired,
        "publishers": publishers,
        "acknowledged": sum(len(p.acked) for p in pubs),
        "duplicate_acks_after_retry": sum(p.duplicates for p in pubs),
        "seconds": round(time.monotonic() - started, 1),
        "problems": problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=KINDS, default="jsonl")
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument(
        "--wal-cycles",
        type=int,
        default=None,
        help="cycles crossing WAL retirement (JSONL only; default 20 there)",
    )
    parser.add_argument("--wal-segment-age", type=float, default=0.2, help="seconds")
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="server processes on the one store (redis only; see bench/crash_cluster.py)",
    )
    parser.add_argument(
        "--commit-window", type=float, default=0.0, help="seconds (JSONL only; default none)"
    )
    parser.add_argument(
        "--durability",
        choices=("fsync", "os"),
        default="fsync",
        help="of the JSONL or SQLite store (default fsync)",
    )
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if args.wal_cycles is None:
        args.wal_cycles = 20 if args.store == "jsonl" and args.durability == "fsync" else 0
    elif args.wal_cycles and (args.store != "jsonl" or args.durability != "fsync"):
        parser.error("--wal-cycles is for --store jsonl at --durability fsync (os has no WAL)")
    if args.commit_window and args.store != "jsonl":
        parser.error("--commit-window is for --store jsonl")
    if args.durability != "fsync" and args.store == "redis":
        parser.error("--durability is for --store jsonl or sqlite")
    if args.instances < 1 or (args.instances > 1 and args.store != "redis"):
        parser.error("--instances above 1 is for --store redis")
    work = Path(tempfile.mkdtemp(prefix=f"bamboo-crash-soak-{args.store}-"))
    result = asyncio.run(
        soak(
            work,
            args.cycles,
            args.publishers,
            args.seed,
            args.wal_cycles,
            args.wal_segment_age,
            args.store,
            args.instances,
            args.commit_window,
            args.durability,
        )
    )
    return report(result, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
