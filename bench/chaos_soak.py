"""Question: do the faults a running server survives ever lose, duplicate or reorder an
acknowledged event, or hand a reader an event twice?

The crash soak (bench/crash_soak.py) SIGKILLs its server; this one mixes in the faults
of a server that stays up, with the same clients (bench/crash_clients.py) and checks
(bench/crash_checks.py). Publishers (keyed events, a window in flight, every one not
acknowledged sent again after a reconnect) and one reader per session go through a
TCP proxy on loopback (bench/chaos_proxy.py); one slow reader per session connects
straight to a server, with a 4 KiB receive buffer and pauses of 0.5 to 2 s, so that its
send queue fills (the servers run with ``--send-queue-frames 64``) and it is closed
with 4429, unless a replay of its resume is under way: the events queued behind that
are read back from the store instead (server/read_back.py), and a reader slower than
the publishers then stays in that replay. Each cycle waits a random instant (0.05 to
0.4 s, and at least one new acknowledgement since the last fault), then:

- cuts 1 to 3 connections through the proxy, each at once or, three times in four,
  once 1 to 300 more bytes went one way (to the server or from it), so mostly in the
  middle of a frame;
- or freezes 1 to 3 of them (in ``FREEZES`` of the cycles, with cuts besides in most):
  a silent partition, no byte, FIN or reset getting through either way. Half the
  frozen links stay so until both ends gave them up (the proxy swallows each end's
  close), the others thaw after 0.2 to 3 s, their held bytes, closes and resets then
  going on late: to a server that may have given the connection up, or from a
  publisher that already resumed elsewhere, its events sent again there (stored once
  all the same, by their keys). The servers run with ``--ping-interval 1
  --ping-timeout 2``, the proxied clients with websockets' keepalive at 0.5 s and 1 s
  and a close timeout of 0.5 s (``CLIENT_KEEPALIVE``), so each end finds a silent link
  on its own within seconds (the first cycle freezes a held link, the second one that
  thaws);
- and in ``GRACEFUL`` of the cycles stops a server with SIGTERM (``--shutdown-grace
  2``: its peers get their backlog, ``closed`` and 1012, a slow reader as it reads, or
  is cut when the grace ends in one of its pauses) and starts it again on the same
  store; in ``KILLED`` of them SIGKILLs it instead (the first cycle
  does the one, the second the other, so that a short run has every fault).

Every client reconnects at once; readers resume with ``last_seq`` + ``epoch``. With
``--instances N`` (Redis only) N servers share the store, each (re)connect goes to one
drawn at random, and a fault takes down one of them while the others serve. After the
last cycle everything pending is retried, readers catch up, the servers stop with
SIGTERM, and the checks are those of the crash soak: every acknowledged event stored
exactly once at its acked seq; each publisher's order kept; each reader (slow ones
too) saw 1..N exactly once, in order, across every cut, 4429 and restart, and was
resumed every time (nothing here trims a log, so ``resumed: false`` is a failure);
every server exited 0 on SIGTERM, its log holds no error and no traceback. And this
soak's own: every frozen link thawed, or both its ends gave it up, within ``PATIENCE``
of its freeze (before the clients are stopped, which would close them too); no log
holds "events handed out again by the session's feed" (the warning of
server/room.py's guard), nor a warning of the check each event frame passes on its
way to a socket (server/sent_events.py: an event not sent again, events missing
before one), and ``bamboo_events_repeated_total``, ``bamboo_events_not_resent_total`` and
``bamboo_event_gaps_total``, read from /metrics before every stop and kill and at the
end, stay 0; a failed run prints those warnings whole.

Run: ``python -m bench.chaos_soak --cycles 300 --max-seconds 300`` (``--store sqlite``,
``--store redis --instances 2`` likewise; tests/test_chaos_soak.py runs a few cycles).
Exit status 0 when every check holds; the figures go to stdout as one JSON object
(``closes_seen``: per role, each close code with its reason; ``keepalive`` is a
client's own keepalive finding its link dead).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from .chaos_proxy import CuttingProxy
from .crash_checks import SESSIONS, check, log_problems, report
from .crash_clients import (
    LOST,
    Keepalive,
    Publisher,
    Reader,
    SlowRead,
    follow,
    publish,
    settle,
)
from .crash_cluster import PATIENCE, Cluster, start_runs, stop_clients, wait_for_progress
from .crash_stores import KINDS, open_soak_store

GRACEFUL = 0.3  # the share of cycles that stop a server with SIGTERM
KILLED = 0.1  # and that SIGKILL one
# The share of cycles that freeze links, and of them those that cut none besides: a
# frozen link takes its client out for seconds where a cut costs a reconnect, and the
# proxy carries only six, so freezing in every cycle would leave none flowing.
FREEZES = 0.35
FREEZES_ONLY = 0.2
# The servers find a silent link within 3 s, the proxied clients within 1.5 s (and
# close it within 0.5 s more): a thaw after 0.2 to 3 s lands before either noticed,
# after the client resumed elsewhere but before the server gave the old connection
# up (its late publishes are stored once, by their keys), or after both did.
# The slow readers, straight to a server, keep websockets' 20 s: nothing between them
# goes silent, and a pause of theirs (up to 2 s) would fail a keepalive of 1 s.
SERVER_KEEPALIVE = ("--ping-interval", "1", "--ping-timeout", "2")
CLIENT_KEEPALIVE = Keepalive(ping_interval=0.5, ping_timeout=1.0, close_timeout=0.5)
# No cap on a session's bytes: at 4 KB an event, a run of minutes fills the default's
# 256 MiB, and its publishers then get only ``too_large`` (a stall of the soak's own).
CHAOS_FLAGS = ("--send-queue-frames", "64", "--write-limit", "4096", "--max-session-bytes", "0")
# The warnings of the server's guards against an event sent twice or after a gap: the
# room's (server/control.py), and the socket's (server/sent_events.py).
WARNINGS = (
    "events handed out again",
    "was sent already was not sent again",
    "events missing before an event frame",
)
# The counters of those guards, summed over every label, over every server's life.
GUARDED = (
    "bamboo_events_repeated_total",
    "bamboo_events_not_resent_total",
    "bamboo_event_gaps_total",
)
# Bytes of each event's content past its key: the servers' rings (1 MiB) then hold 256
# events at most, so resumes read the store as well as the ring.
PADDING = 4000


async def chaos(
    work: Path,
    cycles: int,
    store: str = "jsonl",
    instances: int = 1,
    publishers: int = 4,
    seed: int | None = None,
    max_seconds: float | None = None,
    shutdown_grace: float = 2.0,
) -> dict[str, Any]:
    """Runs up to ``cycles`` cycles of faults (module docstring), within ``max_seconds``
    if given, on ``instances`` servers of ``store`` (files in ``work``), then checks
    everything; the figures, with ``problems`` empty when every check held."""
    if instances < 1 or (instances > 1 and store != "redis"):
        raise ValueError("several instances share a Redis store only")
    seed = random.randrange(1 << 32) if seed is None else seed
    rng = random.Random(seed)
    under_test = open_soak_store(store, work)
    cluster = Cluster(under_test, work, instances, rng)
    for server in cluster.servers:
        server.extra = (
            *server.extra,
            *CHAOS_FLAGS,
            *SERVER_KEEPALIVE,
            *("--shutdown-grace", str(shutdown_grace)),
        )
    proxy = CuttingProxy(cluster.any_port, rng)
    pubs = [
        Publisher(f"p{i}", SESSIONS[i % len(SESSIONS)], padding=PADDING) for i in range(publishers)
    ]
    readers = [Reader(s) for s in SESSIONS]
    slow_readers = [(Reader(s), SlowRead(random.Random(rng.random()))) for s in SESSIONS]
    closes: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    short = CLIENT_KEEPALIVE  # the proxy's links may go silent
    runs = [
        *(
            partial(counted, partial(follow, proxy, r, keepalive=short), closes["readers"])
            for r in readers
        ),
        *(
            partial(counted, partial(follow, cluster, r, slow=slow), closes["slow_readers"])
            for r, slow in slow_readers
        ),
        *(
            partial(counted, partial(publish, proxy, p, keepalive=short), closes["publishers"])
            for p in pubs
        ),
    ]
    figures: dict[str, Any] = {"cycles_run": 0, "graceful_restarts": 0, "kills": 0}
    repeats = Repeats(cluster)
    problems: list[str] = []
    clients: list[asyncio.Task[None]] = []
    started = time.monotonic()
    deadline = started + max_seconds if max_seconds is not None else float("inf")
    try:
        await cluster.start(list(range(instances)))
        await proxy.start()
        clients = await start_runs(runs)
        for cycle in range(cycles):
            if time.monotonic() > deadline:
                break
            try:
                await wait_for_progress(pubs, rng.uniform(0.05, 0.4))
            except RuntimeError as exc:  # a stall: the checks below tell what they can
                problems.append(
                    f"cycle {cycle}: {exc}; {sum(t.done() for t in clients)} "
                    f"of {len(clients)} clients ended"
                )
                break
            network_faults(proxy, rng, cycle)
            # The first two cycles restart, then kill: a short run has every fault.
            draw = (0.0, GRACEFUL)[cycle] if cycle < 2 else rng.random()
            if draw < GRACEFUL + KILLED:
                victim = rng.choice(sorted(cluster.up))
                await repeats.read(victim)
                if draw < GRACEFUL:
                    figures["graceful_restarts"] += 1
                    (status,) = await cluster.stop_gracefully([victim])
                    if status != 0:
                        problems.append(f"instance {victim} exited {status} on SIGTERM")
                else:
                    figures["kills"] += 1
                    cluster.kill([victim])
                await cluster.start([victim])
            figures["cycles_run"] += 1
        for index in sorted(cluster.up):
            await repeats.read(index)
        # Before the clients stop (a cancel closes a connection too): each end of a
        # frozen link must have given it up on its own, within PATIENCE.
        problems += await proxy.unfrozen(PATIENCE)
        problems += await stop_clients(clients)
        await proxy.close()
        everyone = readers + [r for r, _ in slow_readers]
        await settle(cluster, pubs, everyone, PATIENCE * 2)
        problems += cluster.stop()
        problems += await check(under_test, pubs, everyone)
    finally:
        for task in clients:
            task.cancel()
        await proxy.close()
        cluster.kill_all()  # if a step failed while they ran
        under_test.close()
    for i, server in enumerate(cluster.servers):
        problems += [f"instance {i}: {p}" for p in log_problems(server.log_path)]
        problems += [f"instance {i}: {p}" for p in guard_warnings(server.log_path)]
    problems += [f"{name} came to {total:g}" for name, total in repeats.totals.items() if total]
    return {
        "store": store,
        "instances": instances,
        "seed": seed,
        "cycles": cycles,
        "shutdown_grace": shutdown_grace,
        **figures,
        "cuts": proxy.cuts,
        "cuts_mid_stream": proxy.cuts_mid_stream,
        "freezes": proxy.freezes,
        "freezes_held": proxy.freezes_held,
        "thaws": proxy.thaws,
        "thaws_after_an_end_left": proxy.thaws_after_an_end_left,
        "thaws_delivering_a_gone_client": proxy.thaws_delivering_a_gone_client,
        "held_dropped": proxy.held_dropped,
        "held_given_up_s_max": {
            end: round(max(after, default=0.0), 2) for end, after in proxy.gave_up_after.items()
        },
        "closes_seen": {role: dict(sorted(c.items())) for role, c in sorted(closes.items())},
        "slow_reader_pauses": sum(slow.pauses for _, slow in slow_readers),
        "publishers": publishers,
        "acknowledged": sum(len(p.acked) for p in pubs),
        "duplicate_acks_after_retry": sum(p.duplicates for p in pubs),
        "events_repeated": repeats.totals["bamboo_events_repeated_total"],
        "events_not_resent": repeats.totals["bamboo_events_not_resent_total"],
        "event_gaps": repeats.totals["bamboo_event_gaps_total"],
        "metrics_reads": repeats.reads,
        "metrics_unread": repeats.unread,
        "seconds": round(time.monotonic() - started, 1),
        "problems": problems,
    }


def network_faults(proxy: CuttingProxy, rng: random.Random, cycle: int) -> None:
    """Cuts 1 to 3 links, freezes 1 to 3, or both (``FREEZES``, ``FREEZES_ONLY``); the
    first two cycles freeze one each, held then thawing, so a short run has both."""
    if cycle < 2:
        proxy.freeze(1, held=cycle == 0)
        proxy.cut(rng.randint(1, 3))
        return
    draw = rng.random()
    if draw < FREEZES:
        proxy.freeze(rng.randint(1, 3))
    if draw >= FREEZES_ONLY:
        proxy.cut(rng.randint(1, 3))


async def counted(
    client: Callable[..., Awaitable[None]], closes: collections.Counter[str], **kwargs: Any
) -> None:
    """Runs the client, counting how its connection ended: the close code it received
    with its reason (``4429 too slow to read: send queue full``: the server's reasons
    are a few fixed phrases, docs/protocol.md's close codes), ``keepalive`` when none
    came after its own keepalive failed it (a silent link),
    ``cut`` when none came otherwise (a cut, a killed server), or the error that kept
    it from connecting."""
    try:
        await client(**kwargs)
    except ConnectionClosed as exc:
        if exc.rcvd is not None:
            closes[f"{exc.rcvd.code} {exc.rcvd.reason}".rstrip()] += 1
        elif exc.sent is not None and exc.sent.reason == "keepalive ping timeout":
            closes["keepalive"] += 1
        else:
            closes["cut"] += 1
        raise
    except LOST as exc:
        closes[type(exc).__name__] += 1
        raise


class Repeats:
    """The guards' counters (``GUARDED``) summed over their labels and the servers'
    lives: read before each one stops (a restart counts from 0 again) and at the end."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.totals = dict.fromkeys(GUARDED, 0.0)
        self.reads = 0
        self.unread = 0  # a /metrics that did not answer (its log is checked anyway)

    async def read(self, index: int) -> None:
        url = f"http://127.0.0.1:{self.cluster.servers[index].port}/metrics"

        def get() -> str:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return str(answer.read().decode())

        try:
            text = await asyncio.to_thread(get)
        except OSError:
            self.unread += 1
            return
        self.reads += 1
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in self.totals:
                self.totals[name] += float(line.rsplit(" ", 1)[1])


def guard_warnings(log_path: Path) -> list[str]:
    """The log's warnings of the guards against an event sent twice or after a gap,
    whole: each names the connection, the session, the seq, the last seq sent and the
    path the frame came by (server/sent_events.py)."""
    lines = log_path.read_text(errors="replace").splitlines()
    return [f"server log: {line}" for line in lines if any(w in line for w in WARNINGS)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=KINDS, default="jsonl")
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--max-seconds", type=float, default=None, help="stop cycling then")
    parser.add_argument(
        "--instances", type=int, default=1, help="servers on the one store (redis only)"
    )
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--shutdown-grace", type=float, default=2.0, help="the servers', seconds")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    if args.instances < 1 or (args.instances > 1 and args.store != "redis"):
        parser.error("--instances above 1 is for --store redis")
    work = Path(tempfile.mkdtemp(prefix=f"bamboo-chaos-soak-{args.store}-"))
    result = asyncio.run(
        chaos(
            work,
            args.cycles,
            args.store,
            args.instances,
            args.publishers,
            args.seed,
            args.max_seconds,
            args.shutdown_grace,
        )
    )
    return report(result, work, keep=args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
