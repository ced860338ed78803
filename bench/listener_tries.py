"""What do the tries to connect that hellos ask of a Redis store's pub/sub listener cost,
while its connection cannot be made and its pooled ones work (Redis at ``maxclients``)?

A ``hello`` that needs a subscription while the listener is disconnected has it try at
once, no sooner than 50 ms after its last try (persistence/redis/listener.py): a
stream of hellos makes up to 20 tries a second for as long as Redis refuses, where the
listener alone would make one every 2 s. Is that worth a floor that grows with the
failures? In one invocation, one server (``serve --store redis://...``, its pool capped
and warmed, so that the hellos' own reads make no connection and every connection Redis
refuses is a try of the listener), against one redis-server:

- ``up``: a stream of hellos at ``--rate`` for ``--seconds``, each to a parked session
  (so each needs a subscription), welcomed; the baseline.
- ``down``: the same stream, Redis at ``maxclients`` with the listener's connection
  killed: each hello closed 1011 once the try it waits for failed.
- ``idle``: as ``down``, with no hellos: the listener's own tries.

From /proc, the server's and Redis's CPU; from Redis's INFO, the connections it refused
(the tries). Beside them, the server's CPU for one failed try, measured in this process
on the listener's own client against the same refusing Redis: so the share of the
server's CPU the tries took during ``down``.

    python -m bench.listener_tries                  # 100 hellos/s, 5 s a phase
    python -m bench.listener_tries --rate 40 --seconds 0.5 --sessions 5   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.redis.client import connect
from bamboo_session.persistence.redis.config import RedisConfig

from . import common, peers
from .redis_scaling import REDIS_SERVER, Redis

POOL = 8  # the server's connections to Redis: all made while warming
KEPT = "kept"  # a session viewed throughout, so that the listener stays subscribed
TRIES_MEASURED = 500  # failed tries timed in this process


class Control:
    """A connection of this script's to Redis, held open: it counts among Redis's
    clients, so it still works once Redis refuses new ones (``refusing``)."""

    def __init__(self, port: int) -> None:
        self._conn = socket.create_connection((common.HOST, port), timeout=5)
        self._file = self._conn.makefile("rb")

    def command(self, *args: object) -> bytes:
        """The reply: a status, an integer, or a bulk string's body."""
        parts = [str(arg).encode() for arg in args]
        head = b"*%d\r\n" % len(parts)
        self._conn.sendall(head + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        line = self._file.readline().rstrip(b"\r\n")
        if line[:1] != b"$":
            return line
        return self._file.read(int(line[1:]) + 2)[:-2]

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        """Redis at ``maxclients``, the listener's connection killed: every connection
        made meanwhile is refused."""
        clients = int(self.info("clients")["connected_clients"])
        assert self.command("CONFIG", "SET", "maxclients", clients - 1) == b"+OK"
        try:
            killed = self.command("CLIENT", "KILL", "TYPE", "pubsub")
            assert killed == b":1", f"the listener's connection not found: {killed!r}"
            yield
        finally:
            self.command("CONFIG", "SET", "maxclients", 10000)

    def close(self) -> None:
        self._file.close()
        self._conn.close()


def ready(port: int) -> bool:
    """The server's ``/readyz``: 503 while its listener is disconnected."""
    try:
        with urllib.request.urlopen(f"http://{common.HOST}:{port}/readyz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return False


async def until_ready(port: int, wanted: bool, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while await asyncio.to_thread(ready, port) != wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server's /readyz not {wanted} in {seconds} s")
        await asyncio.sleep(0.05)


async def hello(
    server: common.ServerProcess, session_id: str, create: bool = False
) -> tuple[str, float]:
    """A hello to ``session_id``: ``welcome`` or the close code, and the seconds from
    the hello to it; then the connection closes."""
    async with await peers.open_ws(server.url(f"/api/v1/stream/{session_id}")) as ws:
        await ws.send(json.dumps({"type": "hello", "create": create}))
        sent = time.monotonic()
        try:
            outcome = json.loads(await asyncio.wait_for(ws.recv(), 30))["type"]
        except ConnectionClosed as closed:
            outcome = str(closed.rcvd.code if closed.rcvd else None)
        return outcome, time.monotonic() - sent


async def stream(server: common.ServerProcess, args: argparse.Namespace) -> list[tuple[str, float]]:
    """Hellos at ``args.rate`` for ``args.seconds``, round the sessions; what each got."""
    start = time.monotonic()
    hellos: list[asyncio.Task[tuple[str, float]]] = []
    while (due := start + len(hellos) / args.rate) < start + args.seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        hellos.append(asyncio.create_task(hello(server, f"b{len(hellos) % args.sessions}")))
    return await asyncio.gather(*hellos)


async def phase(
    name: str,
    server: common.ServerProcess,
    redis: Redis,
    control: Control,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One phase: ``idle`` waits, the others stream hellos; what it cost, and what
    Redis saw of connections."""
    before = control.info("stats")
    cpu, redis_cpu = common.cpu_seconds(server.pid), common.cpu_seconds(redis.proc.pid)
    started = time.monotonic()
    answers: list[tuple[str, float]] = []
    if name == "idle":
        await asyncio.sleep(args.seconds)
    else:
        answers = await stream(server, args)
    seconds = time.monotonic() - started
    after = control.info("stats")
    hellos = len(answers)
    outcomes = collections.Counter(outcome for outcome, _ in answers)
    waits = sorted(wait for _, wait in answers)
    server_cpu = common.cpu_seconds(server.pid) - cpu
    return {
        "hellos": hellos,
        "outcomes": dict(outcomes),
        "answer_ms_p50": common.percentile(waits, 0.5) * 1e3,
        "answer_ms_p99": common.percentile(waits, 0.99) * 1e3,
        "seconds": seconds,
        "server_cpu_s": server_cpu,
        "redis_cpu_s": common.cpu_seconds(redis.proc.pid) - redis_cpu,
        "server_cpu_us_per_hello": server_cpu / hellos * 1e6 if hellos else None,
        "connections_made": _delta(before, after, "total_connections_received"),
        "connections_refused": _delta(before, after, "rejected_connections"),
    }


def _delta(before: dict[str, str], after: dict[str, str], name: str) -> int:
    return int(after[name]) - int(before[name])


async def cpu_per_try(redis: Redis) -> float:
    """Seconds of this process's CPU for one failed try of the listener's client (a
    pool of one, as in persistence/redis/live.py) on the refusing Redis."""
    client = connect(RedisConfig(url=f"redis://{common.HOST}:{redis.port}"), max_connections=1)
    started = time.process_time()
    for _ in range(TRIES_MEASURED):
        pubsub: Any = client.pubsub()  # redis-py leaves its methods unannotated
        try:
            await pubsub.connect()
        except Exception:  # refused: what is measured
            pass
        else:
            raise RuntimeError("a try connected: Redis is not refusing")
        finally:
            await pubsub.aclose()
    spent = time.process_time() - started
    await client.aclose()
    return spent / TRIES_MEASURED


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with common.workdir("listener-tries") as tmp:
        (tmp / "redis").mkdir()
        redis = Redis(tmp / "redis")
        store = redis.url("bench") + f"&max_connections={POOL}"
        server = common.bamboo_server(tmp / "data", tmp / "bamboo.log", "--store", store)
        try:
            server.start()
            for i in range(args.sessions):
                await hello(server, f"b{i}", create=True)
            await hello(server, KEPT, create=True)
            async with await peers.open_ws(server.url(f"/api/v1/stream/{KEPT}")) as kept:
                await kept.send(json.dumps({"type": "hello"}))
                await kept.recv()
                # Every connection of the pool made, so the phases' reads make none.
                for _ in range(2):
                    sessions = [f"b{i % args.sessions}" for i in range(4 * POOL)]
                    await asyncio.gather(*(hello(server, s) for s in sessions))
                control = Control(redis.port)
                try:
                    runs = {"up": await phase("up", server, redis, control, args)}
                    with control.refusing():
                        await until_ready(server.port, False)
                        runs["down"] = await phase("down", server, redis, control, args)
                        runs["idle"] = await phase("idle", server, redis, control, args)
                        per_try = await cpu_per_try(redis)
                    await until_ready(server.port, True)
                finally:
                    control.close()
        finally:
            server.terminate()
            redis.stop()
    report(runs, per_try)
    return {"question": "listener_tries", "cpu_s_per_try": per_try, "runs": runs}


def report(runs: dict[str, dict[str, Any]], per_try: float) -> None:
    for name, run in runs.items():
        per_hello = run["server_cpu_us_per_hello"]
        answers = ""
        if run["hellos"]:
            p50, p99 = run["answer_ms_p50"], run["answer_ms_p99"]
            answers = f", answered in {p50:.1f} ms (p50), {p99:.1f} ms (p99)"
        print(
            f"{name:>4}: {run['hellos']} hellos {run['outcomes']} in {run['seconds']:.1f} s"
            f"{answers}; server CPU {run['server_cpu_s'] * 1e3:.0f} ms"
            + (f" ({per_hello:.0f} us a hello)" if per_hello else "")
            + f", Redis CPU {run['redis_cpu_s'] * 1e3:.0f} ms; connections made "
            f"{run['connections_made']}, refused {run['connections_refused']} "
            f"({run['connections_refused'] / run['seconds']:.1f}/s)"
        )
    print(f"one failed try: {per_try * 1e6:.0f} us of CPU")
    down, up = runs["down"], runs["up"]
    tries_per_second = down["connections_refused"] / down["seconds"]
    share = down["connections_refused"] * per_try / down["server_cpu_s"]
    question = "listener_tries"
    print(common.ratio_line(question, "tries_per_second_down", tries_per_second, "<= 20"))
    of_a_core = tries_per_second * per_try
    print(common.ratio_line(question, "tries_cpu_share_of_a_core", of_a_core, "< 0.01"))
    print(common.ratio_line(question, "tries_cpu_share_down", share, "small beside the hellos'"))
    ratio = down["server_cpu_us_per_hello"] / up["server_cpu_us_per_hello"]
    print(common.ratio_line(question, "cpu_per_hello_down_over_up", ratio, "<= 1"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="hellos a second")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each phase")
    parser.add_argument("--sessions", type=int, default=50, help="parked, the hellos go round")
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    if not REDIS_SERVER:
        parser.error("redis-server not found: apt-get install -y redis-server")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    result = common.run(main(arguments))
    common.write_json(arguments.json, result)
    sys.exit(0)
