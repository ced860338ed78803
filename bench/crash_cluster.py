"""The crash soak with several instances acting as one server
(``python -m bench.crash_soak --store redis --instances N``).

N Bamboo server processes run on the soak's one redis-server, each on its own ephemeral
loopback port. Publishers and readers work without pause, each (re)connecting to an
instance drawn at random among those up, so that a publisher's resend and a reader's
resume land on another instance than the one they lost (no sticky sessions). Each cycle
waits a random instant (0.05 to 0.4 s, and at least one new acknowledgement since the
last kill), SIGKILLs one instance, or two at once in a quarter of the cycles when N is
3 or more, and restarts it on a new port; the others stay up and keep serving.

After the last cycle the same checks as with one server (bench/crash_checks.py) run on
what the store holds and on every instance's log, and one more on presence: before the
last kill, one watcher per session holds a connection to each instance; once the
clients are stopped, each session's ``connections`` (its metadata, read over HTTP on
every instance) must come down to the watchers still attached, once the killed
instances' connections expired (the soak's instances use a presence heartbeat of
``HEARTBEAT`` seconds, so that takes about that long), and to 0 once the watchers left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import time
import urllib.request
from asyncio import FIRST_COMPLETED
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .crash_checks import SESSIONS, check, log_problems
from .crash_clients import LOST, Publisher, Reader, follow, hello, publish, settle
from .crash_stores import RedisStore, SoakStore

HEARTBEAT = 2.0  # presence heartbeat of the soak's instances, seconds (default 30)
TWO_AT_ONCE = 0.25  # the share of cycles that kill two instances at once (N >= 3)
# A bound on waits that a working server ends far sooner: attaching, the first ack
# after a restart, presence coming down; not a measure.
PATIENCE = 30.0


class Cluster:
    """The instances: started, SIGKILLed (or stopped) and restarted; and the client's endpoint,
    which hands out the URL of an instance drawn at random among those up."""

    def __init__(self, store: SoakStore, work: Path, count: int, rng: random.Random) -> None:
        self.servers = [store.server(work / f"server-{i}.log") for i in range(count)]
        self.up: set[int] = set()
        self.rng = rng
        self.starts = 0
        self.connects = 0  # URLs handed out: the clients' connects and reconnects

    def url(self, session_id: str) -> str:
        self.connects += 1
        return f"ws://127.0.0.1:{self.any_port()}/api/v1/stream/{session_id}"

    def any_port(self) -> int:
        """The port of an instance drawn at random among those up."""
        if not self.up:
            raise OSError("no instance up")  # a client takes it as a lost server
        return self.servers[self.rng.choice(sorted(self.up))].port

    async def start(self, indices: list[int]) -> None:
        """Starts the instances side by side, off the event loop, which keeps serving
        the clients meanwhile."""
        await asyncio.gather(*(asyncio.to_thread(self.servers[i].start) for i in indices))
        self.up.update(indices)
        self.starts += len(indices)

    def kill(self, indices: list[int]) -> None:
        """SIGKILL to every one of them first, then the waits: two die at once."""
        self.up.difference_update(indices)
        procs = [self.servers[i].proc for i in indices]
        for proc in procs:
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)
        for proc in procs:
            assert proc is not None
            proc.wait(10)

    async def stop_gracefully(self, indices: list[int]) -> list[int]:
        """SIGTERM to each, side by side, off the event loop; their exit statuses."""
        self.up.difference_update(indices)
        stops = (asyncio.to_thread(self.servers[i].stop) for i in indices)
        return list(await asyncio.gather(*stops))

    def stop(self) -> list[str]:
        """SIGTERM to every instance; a problem for each that did not exit 0."""
        self.up.clear()
        statuses = [server.stop() for server in self.servers]
        return [f"instance {i} exited {s} on SIGTERM" for i, s in enumerate(statuses) if s]

    def kill_all(self) -> None:
        for server in self.servers:
            server.kill()

    async def connections(self, index: int, session_id: str) -> int:
        """The session's ``connections`` in its metadata, as instance ``index`` answers."""
        url = f"http://127.0.0.1:{self.servers[index].port}/api/v1/sessions/{session_id}?limit=1"

        def read() -> int:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(json.loads(answer.read())["metadata"]["connections"])

        return await asyncio.to_thread(read)


async def keep_connecting(
    client: Callable[[], Awaitable[None]], attached: asyncio.Event | None = None
) -> None:
    """Runs the client again each time its server is lost, until cancelled."""
    while True:
        with contextlib.suppress(*LOST):
            await client()
        if attached is not None:
            attached.set()  # it did reach one, or tried: starting must not wait for it
        await asyncio.sleep(0.01)


async def watch(cluster: Cluster, index: int, session_id: str, ready: asyncio.Event) -> None:
    """Holds a connection to instance ``index``, reading whatever comes, until it is
    lost (its instance killed) or cancelled."""
    url = cluster.servers[index].url(session_id)
    async with connect(url, open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="client")
        ready.set()
        while True:
            await ws.recv()


async def soak_instances(
    work: Path, cycles: int, instances: int, publishers: int = 4, seed: int | None = None
) -> dict[str, Any]:
    """Runs ``cycles`` kill-and-restart cycles on ``instances`` instances of one Redis
    store (files in ``work``), then checks everything (module docstring); the figures,
    with ``problems`` empty when every check held."""
    if instances < 2 or cycles < 1:
        raise ValueError("several instances (2 at least) and one cycle at least")
    rng = random.Random(seed)
    store = RedisStore(work, heartbeat=HEARTBEAT)
    cluster = Cluster(store, work, instances, rng)
    pubs = [Publisher(f"p{i}", SESSIONS[i % len(SESSIONS)]) for i in range(publishers)]
    readers = [Reader(s) for s in SESSIONS]
    clients: list[asyncio.Task[None]] = []
    watchers: list[tuple[int, str, asyncio.Task[None]]] = []
    figures: dict[str, Any] = {"kills": 0, "two_at_once": 0}
    problems: list[str] = []
    started = killed_at = time.monotonic()
    try:
        await cluster.start(list(range(instances)))
        clients = await start_clients(cluster, pubs, readers)
        for cycle in range(cycles):
            await wait_for_progress(pubs, rng.uniform(0.05, 0.4))
            if cycle == cycles - 1:
                watchers = await open_watchers(cluster)
            two = instances >= 3 and rng.random() < TWO_AT_ONCE
            victims = rng.sample(sorted(cluster.up), 2 if two else 1)
            cluster.kill(victims)
            figures["kills"] += len(victims)
            figures["two_at_once"] += two
            if cycle == cycles - 1:
                killed_at = time.monotonic()
                problems += await stop_clients(clients)
                figures["presence_first_look"] = await presence_counts(cluster)
                looked = time.monotonic() - killed_at
                figures["presence_first_look_s_after_last_kill"] = round(looked, 2)
            await cluster.start(victims)
        figures |= await presence_converges(cluster, watchers, killed_at)
        problems += figures.pop("presence_problems")
        await settle(cluster, pubs, readers, PATIENCE * 2)
        problems += cluster.stop()
        problems += await check(store, pubs, readers)
    finally:
        for task in clients + [task for _, _, task in watchers]:
            task.cancel()
        cluster.kill_all()  # if a step failed while they ran
        store.close()
    for i, server in enumerate(cluster.servers):
        problems += [f"instance {i}: {p}" for p in log_problems(server.log_path)]
    return {
        "store": "redis",
        "instances": instances,
        "cycles": cycles,
        **figures,
        "starts": cluster.starts,
        "client_connects": cluster.connects,
        "presence_heartbeat": HEARTBEAT,
        "publishers": publishers,
        "acknowledged": sum(len(p.acked) for p in pubs),
        "duplicate_acks_after_retry": sum(p.duplicates for p in pubs),
        "seconds": round(time.monotonic() - started, 1),
        "problems": problems,
    }


async def start_clients(
    cluster: Cluster, pubs: list[Publisher], readers: list[Reader]
) -> list[asyncio.Task[None]]:
    """Readers first (so that they see live events too), then publishers."""
    return await start_runs(
        [
            *(partial(follow, cluster, reader) for reader in readers),
            *(partial(publish, cluster, pub) for pub in pubs),
        ]
    )


async def start_runs(runs: Sequence[Callable[..., Awaitable[None]]]) -> list[asyncio.Task[None]]:
    """Each client, reconnecting each time its server is lost, started once the one
    before attached (or failed to: ``PATIENCE`` bounds the wait)."""
    tasks = []
    for run in runs:
        attached = asyncio.Event()
        client = partial(run, attached=attached)
        tasks.append(asyncio.create_task(keep_connecting(client, attached)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attached.wait(), PATIENCE)
    return tasks


async def stop_clients(tasks: list[asyncio.Task[None]]) -> list[str]:
    """Cancels the clients; a problem for each that had ended on an error of its own
    (a lost server is not one: it reconnects)."""
    for task in tasks:
        task.cancel()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    return [
        f"a client failed: {error!r}"
        for error in ended
        if isinstance(error, BaseException) and not isinstance(error, asyncio.CancelledError)
    ]


def total_acked(pubs: list[Publisher]) -> int:
    return sum(len(p.acked) for p in pubs)


async def wait_for_progress(pubs: list[Publisher], delay: float) -> None:
    """Waits ``delay`` seconds, and more if no event was acknowledged meanwhile: on a
    loaded machine a restart may take longer than a cycle, and kills that land before
    anyone publishes again check nothing."""
    before = total_acked(pubs)
    await asyncio.sleep(delay)
    deadline = time.monotonic() + PATIENCE
    while total_acked(pubs) == before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no event acknowledged in {PATIENCE} s")
        await asyncio.sleep(0.01)


async def open_watchers(cluster: Cluster) -> list[tuple[int, str, asyncio.Task[None]]]:
    """One watcher per session on each instance up, once each was welcomed."""
    watchers = []
    for index in sorted(cluster.up):
        for session_id in SESSIONS:
            ready = asyncio.Event()
            task = asyncio.create_task(watch(cluster, index, session_id, ready))
            welcomed = asyncio.create_task(ready.wait())
            await asyncio.wait({task, welcomed}, timeout=PATIENCE, return_when=FIRST_COMPLETED)
            welcomed.cancel()
            if not ready.is_set():
                raise RuntimeError(f"watcher of {session_id} on instance {index} not welcomed")
            watchers.append((index, session_id, task))
    return watchers


async def presence_counts(cluster: Cluster) -> dict[str, list[int]]:
    """Each session's ``connections``, as each instance up answers (in index order)."""
    return {
        session_id: [await cluster.connections(i, session_id) for i in sorted(cluster.up)]
        for session_id in SESSIONS
    }


async def presence_converges(
    cluster: Cluster, watchers: list[tuple[int, str, asyncio.Task[None]]], killed_at: float
) -> dict[str, Any]:
    """Polls every instance until each session counts its watchers still attached,
    then, once they left, none; how long each took, and a problem for either that did
    not come within ``HEARTBEAT + PATIENCE`` seconds."""

    def expected() -> dict[str, list[int]]:
        alive = [s for _, s, task in watchers if not task.done()]
        return {s: [alive.count(s)] * len(cluster.up) for s in SESSIONS}

    async def until_expected(since: float) -> tuple[float | None, dict[str, list[int]]]:
        deadline = since + HEARTBEAT + PATIENCE
        while True:
            counts = await presence_counts(cluster)
            if counts == expected():
                return round(time.monotonic() - since, 2), counts
            if time.monotonic() > deadline:
                return None, counts
            await asyncio.sleep(0.1)

    problems = []
    attached = expected()
    converged, counts = await until_expected(killed_at)
    if converged is None:
        problems.append(f"presence: {counts}, not the watchers attached {expected()}")
    for _, _, task in watchers:
        task.cancel()
    await asyncio.gather(*(task for _, _, task in watchers), return_exceptions=True)
    left_at = time.monotonic()
    to_zero, zero_counts = await until_expected(left_at)
    if to_zero is None:
        problems.append(f"presence: {zero_counts} once every watcher left, not 0")
    return {
        "watchers": len(watchers),
        "watchers_attached_after_last_kill": {s: n[0] for s, n in attached.items()},
        "presence_converged_s_after_last_kill": converged,
        "presence_zero_s_after_watchers_left": to_zero,
        "presence_problems": problems,
    }
