"""The client soak: the project's own clients, used as an application would use them,
through network faults and server crashes
(``python -m bench.client_soak --store jsonl|redis --seconds 480``).

The server's soaks (bench/chaos_soak.py, bench/crash_soak.py) use raw websockets
clients; this one holds the clients to the product's promise: a follower that drops and
comes back gets exactly the events it missed, in order, once, and a publisher's retry is
safe with keys. The applications are bench/client_soak_apps.py's: Python publishers,
Python followers (one slow, with a small queue) and a JavaScript follower under Node,
all on one session, all through bench/chaos_proxy.py's CuttingProxy, which cuts and
freezes their connections. Behind it, one server (``jsonl``) or two sharing a Redis
store (``redis``, on a redis-server of the soak's own), each connection going to an
instance drawn at random among those up. Every few seconds an instance is SIGKILLed
(or, one time in five, stopped with SIGTERM) and restarted; sometimes every instance
stays down for ``OUTAGE`` seconds, after which no Python client may say ``connected``.
Every held (never thawed) link must be given up by both ends within the proxy's
patience, save one the JavaScript follower still holds: on Node's built-in WebSocket,
which has no abort, the client gives a silent link up (and resumes) but its socket stays
open while the path stays silent (docs/protocol.md, "JavaScript client"); those are
counted (``held_by_js_builtin_websocket``), and the follower must still catch up.
With ``--js-websocket ws`` the followers run on the ws package's WebSocket, which the
client terminates, and are held to the check like the Python clients.

At the end the chaos stops, the followers catch up, each follower (Python or
JavaScript) says ``connected`` within ``RESUME_PATIENCE`` (it may be resuming at the
instant it caught up: see bench/client_soak_checks.py's
:func:`connected_once_caught_up`), every client is closed (timed), the servers
stop, and the checks of bench/client_soak_checks.py run on what the store holds.
Exits 1 when any check failed. Every process it starts it stops, by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bamboo_session.protocol.client import BambooClient

from .chaos_proxy import CuttingProxy
from .client_soak_apps import CLOSE_BOUND, Follower, JsFollower, Publisher
from .client_soak_checks import (
    RESUME_PATIENCE,
    check_all,
    connected_once_caught_up,
    js_connected_once_caught_up,
)
from .crash_cluster import Cluster
from .crash_stores import JsonlStore, RedisStore, SoakStore

SESSION = "client-soak"
OUTAGE = 3.5  # seconds every instance stays down, in some cycles: > PING * 2 + slack
KILL_EVERY = (2.0, 6.0)  # seconds between two kills, drawn uniformly
GRACEFUL = 0.2  # the share of stops that are a SIGTERM
ALL_DOWN = 0.2  # the share of cycles that leave every instance down for OUTAGE
CATCH_UP = 60.0  # seconds the followers may take to catch up once the chaos stopped
SAMPLE_EVERY = 5.0  # seconds between samples of tasks and memory
# Seconds a link frozen for good may stay frozen once the chaos stopped: its server
# gives it up within its keepalive's bound, a Ping every 20 s answered within 20 s,
# then the 1011 close's own 5 s (the defaults, which the soak's servers run with),
# and slack for a loaded machine; the clients give theirs up within about 2 s (PING).
FROZEN_PATIENCE = 20.0 + 20.0 + 5.0 + 15.0


def http_last_seq(cluster: Cluster) -> int:
    port = cluster.any_port()
    url = f"http://127.0.0.1:{port}/api/v1/sessions/{SESSION}/events?after_seq=0&limit=1"
    with urllib.request.urlopen(url, timeout=5) as answer:
        return int(json.loads(answer.read())["last_seq"])


def ports_to(port: int, pid: int | str = "self") -> set[int]:
    """The local ports of process ``pid``'s TCP sockets connected to ``port`` on
    loopback, in any state but closed (Linux: /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in list(table)[1:]]
    return {
        int(r[1].split(":")[1], 16)
        for r in rows
        if int(r[2].split(":")[1], 16) == port and r[9] in inodes
    }


def open_to_port(port: int, pid: int | str = "self") -> int:
    """How many of process ``pid``'s TCP sockets are connected to ``port``."""
    return len(ports_to(port, pid))


class Soak:
    def __init__(self, store: SoakStore, instances: int, work: Path, args: argparse.Namespace):
        self.rng = random.Random(args.seed)
        self.store = store
        self.work = work
        self.cluster = Cluster(store, work, instances, self.rng)
        self.proxy = CuttingProxy(self.cluster.any_port, self.rng)
        self.args = args
        self.figures: dict[str, Any] = {"kills": 0, "sigterms": 0, "outages": 0}
        self.problems: list[str] = []
        self.samples: list[dict[str, int]] = []
        self.publishers: list[Publisher] = []
        self.followers: list[Follower] = []
        self.js: list[JsFollower] = []
        # Seconds each follower took to say connected once caught up.
        self.connected_after: dict[str, float] = {}

    def _apps(self) -> list[Publisher | Follower]:
        """The Python applications, publishers first."""
        return [*self.publishers, *self.followers]

    async def run(self) -> dict[str, Any]:
        await self.cluster.start(list(range(len(self.cluster.servers))))
        await self.proxy.start()
        direct = f"ws://127.0.0.1:{self.cluster.any_port()}"
        create = await BambooClient.connect(direct, SESSION, create=True)
        await create.close()
        url = f"ws://127.0.0.1:{self.proxy.port}"
        self._make_apps(url)
        stop = asyncio.Event()
        for js in self.js:
            await js.start()
        runs = [asyncio.ensure_future(app.run(stop)) for app in self._apps()]
        sampler = asyncio.ensure_future(self._sample())
        started = time.monotonic()
        await self._chaos(started + self.args.seconds)
        self.figures["chaos_seconds"] = round(time.monotonic() - started, 1)
        await self._settle(stop, runs)
        sampler.cancel()
        await self._stop_servers()
        records, store_problems = await self.store.records(SESSION)
        self.problems += store_problems
        self.problems += check_all(records, self.publishers, self.followers, self.js, self.samples)
        self._count(records)
        return {"figures": self.figures, "problems": self.problems}

    def _make_apps(self, url: str) -> None:
        a = self.args
        for i in range(a.publishers):
            timeout = 3.0 if i % 2 else None  # half of them give up on a slow reply
            self.publishers.append(Publisher(f"p{i}", url, SESSION, self._rng(), timeout))
        for i in range(a.followers):
            self.followers.append(Follower(f"f{i}", url, SESSION, self._rng(), slow=i == 0))
            self.followers[-1].codec = "msgpack" if i % 2 else "json"
        for i in range(a.js):
            self.js.append(
                JsFollower(f"js{i}", url, SESSION, self.work, slow=i == 1, websocket=a.js_websocket)
            )

    def _rng(self) -> random.Random:
        return random.Random(self.rng.random())

    # -- chaos ----------------------------------------------------------------------------

    async def _chaos(self, deadline: float) -> None:
        next_kill = time.monotonic() + self.rng.uniform(*KILL_EVERY)
        while time.monotonic() < deadline:
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
            roll = self.rng.random()
            if roll < 0.4:
                self.proxy.cut(self.rng.randint(1, 2))
            elif roll < 0.6:
                self.proxy.freeze(1)
            if time.monotonic() >= next_kill:
                await self._cycle()
                next_kill = time.monotonic() + self.rng.uniform(*KILL_EVERY)

    async def _cycle(self) -> None:
        """Stops one instance (or all), waits, restarts them."""
        up = sorted(self.cluster.up)
        all_down = self.rng.random() < ALL_DOWN
        victims = up if all_down or len(up) == 1 else [self.rng.choice(up)]
        if self.rng.random() < GRACEFUL:
            self.figures["sigterms"] += len(victims)
            for i, status in zip(victims, await self.cluster.stop_gracefully(victims), strict=True):
                if status != 0:
                    self.problems.append(f"instance {i} exited {status} on SIGTERM")
        else:
            self.figures["kills"] += len(victims)
            self.cluster.kill(victims)
        if all_down and self.rng.random() < 0.5:
            self.figures["outages"] += 1
            await asyncio.sleep(OUTAGE)
            self._check_disconnected()
        else:
            await asyncio.sleep(self.rng.uniform(0.05, 1.0))
        await self.cluster.start(victims)

    def _check_disconnected(self) -> None:
        """Every instance has been down for OUTAGE seconds: no client may say connected."""
        for app in self._apps():
            client = app.client
            if client is not None and client.connected and not client.finished:
                self.problems.append(f"{app.name}: connected is True {OUTAGE} s into an outage")

    # -- the end --------------------------------------------------------------------------

    async def _settle(self, stop: asyncio.Event, runs: Sequence[asyncio.Future[None]]) -> None:
        self.problems += await self.proxy.unfrozen(FROZEN_PATIENCE, held_by_design=self._js_ports)
        stop.set()
        pubs = runs[: len(self.publishers)]
        _, late = await asyncio.wait(pubs, timeout=60)
        if late:
            self.problems.append(f"{len(late)} publishers did not stop within 60 s")
        last = await asyncio.to_thread(http_last_seq, self.cluster)
        self.figures["last_seq"] = last
        deadline = time.monotonic() + CATCH_UP
        while time.monotonic() < deadline and not self._caught_up(last):  # noqa: ASYNC110 - polls other apps' lists
            await asyncio.sleep(0.2)
        for follower in self.followers:
            waited, problem = await connected_once_caught_up(follower, RESUME_PATIENCE)
            self.connected_after[follower.name] = waited
            if problem:
                self.problems.append(problem)
            await follower.close()
        for js in self.js:
            waited, problem = await js_connected_once_caught_up(js, RESUME_PATIENCE)
            self.connected_after[js.name] = waited
            if problem:
                self.problems.append(problem)
        _, late = await asyncio.wait(runs[len(self.publishers) :], timeout=2 * CLOSE_BOUND)
        if late:
            self.problems.append(f"{len(late)} followers did not stop after close()")
        for task in [*runs]:
            task.cancel()
        for js in self.js:
            assert js.proc is not None
            # Its one live connection; any more are connections it gave up, still open.
            self.figures[f"{js.name}_sockets_at_end"] = open_to_port(self.proxy.port, js.proc.pid)
            problem = await js.stop(bound=2 * CLOSE_BOUND)
            if problem:
                self.problems.append(problem)

    def _js_ports(self) -> set[int]:
        """The JavaScript followers' sockets to the proxy: on Node's built-in WebSocket,
        which has no abort, each keeps a connection it gave up as silent open for as
        long as the path stays silent (docs/protocol.md, "JavaScript client"). Whether
        it gave the link up is checked by what it saw: a follower left on a frozen link
        would not catch up."""
        ports: set[int] = set()
        for js in self.js:
            if js.websocket == "builtin" and js.proc is not None and js.proc.returncode is None:
                ports |= ports_to(self.proxy.port, js.proc.pid)
        return ports

    def _caught_up(self, last: int) -> bool:
        seen = [f.delivered() for f in self.followers]
        return all(s >= last for s in seen) and all(js.progress >= last for js in self.js)

    async def _stop_servers(self) -> None:
        # Every client is closed: none may still hold a connection to the proxy.
        left = open_to_port(self.proxy.port)
        if left:
            self.problems.append(
                f"{left} sockets to the proxy still open in the soak once its clients closed"
            )
        self.problems += self.cluster.stop()
        await self.proxy.close()

    async def _sample(self) -> None:
        while True:
            for js in self.js:
                js.sample_rss()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.samples.append({"tasks": len(asyncio.all_tasks()), "max_rss_kib": rss})
            await asyncio.sleep(SAMPLE_EVERY)

    def _count(self, records: list[Any]) -> None:
        f = self.figures
        f["stored"] = len(records)
        f["publish_calls"] = sum(p.calls for p in self.publishers)
        f["acked"] = sum(len(p.acked) for p in self.publishers)
        f["raised_keys"] = sum(len(set(p.raised) - set(p.acked)) for p in self.publishers)
        f["cuts"], f["freezes"] = self.proxy.cuts, self.proxy.freezes
        f["held_by_js_builtin_websocket"] = self.proxy.held_by_design
        f["server_starts"] = self.cluster.starts
        for app in self._apps():
            fig = app.figures
            f[app.name] = {
                "clients": fig.clients,
                "reconnects": fig.reconnects,
                "resent": fig.resent,
                "connect_failures": fig.connect_failures,
                "errors": fig.ended_with,
                "slowest_close_s": round(max(fig.close_seconds, default=0), 2),
            }
            if app.name in self.connected_after:
                f[app.name]["connected_after_catch_up_s"] = round(self.connected_after[app.name], 2)
        for js in self.js:
            r = dict(js.report)
            r.pop("seen", None)
            r["max_rss_kib"] = max(js.rss_kib, default=0)
            if js.name in self.connected_after:
                r["connected_after_catch_up_s"] = round(self.connected_after[js.name], 2)
            f[js.name] = r
        f["tasks"] = [s["tasks"] for s in self.samples[:: max(1, len(self.samples) // 8)]]


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="client-soak-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        store: SoakStore = JsonlStore(work) if args.store == "jsonl" else RedisStore(work)
        instances = 1 if args.store == "jsonl" else 2
        runner = Soak(store, instances, work, args)
        try:
            return await runner.run()
        finally:
            runner.cluster.kill_all()
            for js in runner.js:
                if js.proc is not None and js.proc.returncode is None:
                    js.proc.kill()
                    await js.proc.wait()
            store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "redis"), default="jsonl")
    parser.add_argument("--seconds", type=float, default=480.0, help="of chaos")
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--followers", type=int, default=2, help="Python followers")
    parser.add_argument("--js", type=int, default=2, help="JavaScript followers (js1 slow)")
    parser.add_argument(
        "--js-websocket",
        choices=("builtin", "ws"),
        default="builtin",
        help="the JavaScript followers' WebSocket: Node's, or the ws package's"
        " (tests/js/node_modules), whose given-up sockets the client terminates",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--work", default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    print(json.dumps(result, indent=1))
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
