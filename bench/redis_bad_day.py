"""Gives the Redis under two Bamboo instances a bad day, one fault at a time, while
keyed publishers, resuming viewers and a creator of sessions run, then checks what
held (``python -m bench.redis_bad_day``; run from a worktree with the shim on
``PYTHONPATH`` to test that worktree's code).

Faults: ``maxmemory`` reached (``noeviction``, ``allkeys-lru``), ``DEBUG SLEEP``,
SIGSTOP/SIGCONT of redis-server, ``kill -9`` and a restart from the AOF, a restart
EMPTY on the same port (a failover to an empty replica), ``CLIENT KILL`` of normal and
pub/sub connections; ``--kill-instance`` also SIGKILLs instance 0 in each fault and
starts it again. After each fault: both ``/readyz`` back to 200, new acks, viewers on
both instances getting events, within ``RECOVERY`` seconds; per instance, the log lines
and RSS. At the end: every acknowledged key stored once, at its acked seq, in the epoch
it was acked under; viewers saw no gap and no seq twice within an epoch; publishers got
no event of theirs on the connection that published it (``own_events``).

Bounded: each fault lasts seconds, the run a few minutes at most; every process it
starts (redis-server, the instances) is stopped by its pid at the end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

from . import redis_bad_day_clients
from .common import rss_kib
from .redis_bad_day_clients import Publisher, Tally, Viewer, create_sessions, keep, publish, view

SESSIONS = 3
RECOVERY = 20.0  # seconds each instance has to come back once Redis has
PREFIX = "bamboo"
LISTENING = re.compile(rb"listening on [0-9.]+:(\d+)")
FAULTS = (
    "noeviction",
    "allkeys_lru",
    "debug_sleep",
    "sigstop",
    "sigstop_long",
    "kill_aof",
    "client_kill_normal",
    "client_kill_pubsub",
    "kill_empty",
)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Redis:
    """One redis-server on a fixed port; its AOF in ``directory``."""

    def __init__(self, directory: Path, lossy: bool) -> None:
        self.directory = directory
        self.port = free_port()
        self.fsync = "everysec" if lossy else "always"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--save",
            "",
            "--daemonize",
            "no",
            "--enable-debug-command",
            "local",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if self.client().ping():
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def client(self, timeout: float = 5) -> Any:
        """A plain client (typed Any: redis-py leaves most commands untyped)."""
        return redis.Redis(port=self.port, socket_timeout=timeout, decode_responses=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self) -> None:
        for path in self.directory.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()


class Cluster:
    def __init__(self, work: Path, store: str) -> None:
        self.work = work
        self.store = store
        self.instances: list[subprocess.Popen[bytes] | None] = [None, None]
        self.ports = [0, 0]

    def start(self, index: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "bamboo_session.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports[index]),
            "--store",
            self.store,
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--session-create-rate",
            "0",
            "--store-read-timeout",
            "3",
        ]
        log = self.work / f"i{index}.log"
        start = log.stat().st_size if log.exists() else 0
        with log.open("ab") as sink:  # unbuffered into the file: lines counted while it runs
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=sink
            )
        self.instances[index] = proc
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            with log.open("rb") as reading:
                reading.seek(start)
                found = LISTENING.search(reading.read())
            if found:
                self.ports[index] = int(found.group(1))
                return
            time.sleep(0.05)
        raise RuntimeError(f"instance {index} did not start; see {log}")

    def kill(self, index: int) -> None:
        proc = self.instances[index]
        if proc is not None:
            proc.kill()
            proc.wait(10)
        self.instances[index] = None

    def live_ports(self) -> list[int]:
        return [p for p, s in zip(self.ports, self.instances, strict=True) if s is not None]

    def stop(self) -> None:
        for proc in self.instances:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def log_lines(self, index: int) -> int:
        path = self.work / f"i{index}.log"
        return sum(1 for _ in path.open("rb")) if path.exists() else 0


def http(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return 0, str(error)


async def fault(name: str, rds: Redis, cluster: Cluster, kill_instance: bool) -> dict[str, Any]:
    """Applies one fault for a few seconds; what was seen meanwhile."""
    seen: dict[str, Any] = {"fault": name, "readyz": []}
    client = rds.client()

    async def poll_readyz(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            codes = [(await asyncio.to_thread(http, p, "/readyz")) for p in cluster.live_ports()]
            seen["readyz"].append([c for c, _ in codes])
            if any(c == 503 for c, _ in codes):
                seen.setdefault("readyz_reason", next(b for c, b in codes if c == 503)[:200])
            await asyncio.sleep(0.5)

    if kill_instance:
        cluster.kill(0)
    if name in ("noeviction", "allkeys_lru"):
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", name.replace("_", "-"))
        client.config_set("maxmemory", str(used + 200_000))
        await poll_readyz(8)
        seen["evicted"] = client.info("stats")["evicted_keys"]
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", "noeviction")
    elif name == "debug_sleep":
        sleeper = asyncio.create_task(
            asyncio.to_thread(lambda: rds.client(timeout=10).execute_command("DEBUG", "SLEEP", "3"))
        )
        await poll_readyz(4)
        await sleeper
    elif name in ("sigstop", "sigstop_long"):  # the long one outlasts the 10 s socket timeout
        assert rds.proc is not None
        os.kill(rds.proc.pid, signal.SIGSTOP)
        await poll_readyz(7 if name == "sigstop" else 13)
        os.kill(rds.proc.pid, signal.SIGCONT)
    elif name in ("kill_aof", "kill_empty"):
        rds.kill()
        await poll_readyz(3)
        if name == "kill_empty":
            rds.wipe()
        rds.start()
    elif name.startswith("client_kill"):
        kind = name.rsplit("_", 1)[1]
        seen["killed"] = client.execute_command("CLIENT", "KILL", "TYPE", kind)
        await poll_readyz(2)
    if kill_instance:
        cluster.start(0)
    return seen


async def recovered(
    cluster: Cluster, pubs: list[Publisher], viewers: list[Viewer]
) -> dict[str, Any]:
    """Seconds until both instances are ready, every publisher acked, every viewer fed."""
    start = time.monotonic()
    out: dict[str, Any] = {}
    deadline = start + RECOVERY
    while time.monotonic() < deadline:
        codes = [(await asyncio.to_thread(http, p, "/readyz"))[0] for p in cluster.live_ports()]
        if "ready" not in out and all(c == 200 for c in codes):
            out["ready"] = round(time.monotonic() - start, 2)
        if "acks" not in out and all(p.last_ack_at > start for p in pubs):
            out["acks"] = round(time.monotonic() - start, 2)
        if "viewers" not in out and all(v.last_event_at > start for v in viewers):
            out["viewers"] = round(time.monotonic() - start, 2)
        if len(out) == 3:
            return out
        await asyncio.sleep(0.25)
    out["NOT_RECOVERED"] = [k for k in ("ready", "acks", "viewers") if k not in out]
    out["stuck_viewers"] = [(v.session_id, v.instance) for v in viewers if v.last_event_at <= start]
    return out


def check_store(rds: Redis, port: int, pubs: list[Publisher], epochs_lost: set[str]) -> list[str]:
    """Every key acked under the epoch the store serves now (as an instance serves it,
    the generation's token included): once, at its acked seq."""
    client = rds.client()
    problems: list[str] = []
    for pub in pubs:
        status, body = http(port, f"/api/v1/sessions/{pub.session_id}")
        epoch = json.loads(body)["metadata"]["epoch"] if status == 200 else None
        entries = client.xrange(f"{PREFIX}:{{{pub.session_id}}}:log")
        at: dict[str, list[int]] = {}
        for entry_id, fields in entries:
            key = fields.get("k", "")
            at.setdefault(key, []).append(int(entry_id.split("-")[0]))
        for key, (seq, acked_epoch) in pub.acked.items():
            if acked_epoch != epoch:
                epochs_lost.add(acked_epoch)
                continue
            if at.get(key) != [seq]:
                problems.append(f"{pub.session_id} {key}: acked {seq}, stored at {at.get(key)}")
        problems += [f"{pub.session_id} {k}: stored at {v}" for k, v in at.items() if len(v) > 1]
    return problems


async def main(args: argparse.Namespace) -> int:
    redis_bad_day_clients.PATIENCE = args.patience
    work = Path(tempfile.mkdtemp(prefix="bamboo-redis-bad-day-"))
    (work / "redis").mkdir()
    rds = Redis(work / "redis", args.lossy)
    lossy = "&accept_lossy=true" if args.lossy else ""
    cluster = Cluster(work, f"redis://127.0.0.1:{rds.port}/0?prefix={PREFIX}&heartbeat=3{lossy}")
    try:
        rds.start()
        report = await run(args, rds, cluster)
    finally:
        cluster.stop()
        rds.kill()
    report["tracebacks"] = [
        sum("Traceback" in line for line in (work / f"i{i}.log").open(errors="replace"))
        for i in (0, 1)
    ]
    report["work"] = str(work)
    print(json.dumps(report, indent=1))
    return 1 if report["store_problems"] or any(v["problems"] for v in report["viewers"]) else 0


async def run(args: argparse.Namespace, rds: Redis, cluster: Cluster) -> dict[str, Any]:
    tasks: list[asyncio.Task[None]] = []
    report: dict[str, Any] = {"faults": []}
    cluster.start(0)
    cluster.start(1)
    pubs = [Publisher(f"s{n}") for n in range(SESSIONS)]
    viewers = [Viewer(f"s{n}", i) for n in range(SESSIONS) for i in (0, 1)]
    created: list[str] = []
    creator = Tally()
    try:
        tasks += [
            asyncio.create_task(
                keep(lambda port, p=p: publish(p, port), p.tally, cluster.live_ports)
            )
            for p in pubs
        ]
        await asyncio.sleep(1.0)  # the sessions exist before the viewers come

        def prefer(v: Viewer) -> Any:
            return lambda: (
                [cluster.ports[v.instance]]
                if cluster.instances[v.instance]
                else cluster.live_ports()
            )

        tasks += [
            asyncio.create_task(keep(lambda port, v=v: view(v, port), v.tally, prefer(v)))
            for v in viewers
        ]
        tasks.append(asyncio.create_task(create_sessions(created, creator, cluster.live_ports)))
        await asyncio.sleep(3.0)
        for name in args.faults.split(","):
            lines = [cluster.log_lines(i) for i in (0, 1)]
            seen = await fault(name, rds, cluster, args.kill_instance)
            seen["recovery"] = await recovered(cluster, pubs, viewers)
            seen["log_lines"] = [cluster.log_lines(i) - lines[i] for i in (0, 1)]
            seen["rss_kib"] = [rss_kib(p.pid) if p else None for p in cluster.instances]
            seen["readyz"] = sorted({tuple(c) for c in seen["readyz"]})
            report["faults"].append(seen)
            print(json.dumps(seen), flush=True)
            await asyncio.sleep(2.0)
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
    epochs_lost: set[str] = set()
    report["store_problems"] = check_store(rds, cluster.live_ports()[0], pubs, epochs_lost)[:20]
    report["epochs_lost"] = len(epochs_lost)
    report["acked"] = sum(len(p.acked) for p in pubs)
    report["publishers"] = [p.summary() for p in pubs]
    report["viewers"] = [
        {
            "problems": v.problems[:5],
            "not_resumed": v.not_resumed,
            "events": len(v.seen),
            "closes": v.tally.closes,
        }
        for v in viewers
    ]
    report["created"] = len(created)
    report["creator"] = {"errors": creator.errors, "closes": creator.closes}
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument(
        "--kill-instance", action="store_true", help="SIGKILL instance 0 in each fault"
    )
    parser.add_argument(
        "--lossy", action="store_true", help="appendfsync everysec, accept_lossy=true"
    )
    parser.add_argument(
        "--patience",
        type=float,
        default=redis_bad_day_clients.PATIENCE,
        help="seconds a peer waits for a reply (past the store's 10 s socket timeout: "
        "publishers see what an append that timed out is answered)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
