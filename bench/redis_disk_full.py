"""Runs Redis's own disk out of space under two Bamboo instances that share it, while
keyed publishers stream and viewers watch and resume, and holds Bamboo to what it
acknowledged (``python -m bench.redis_disk_full``, as root; from a worktree with the
shim on ``PYTHONPATH`` to test that worktree's code).

Redis's ``dir`` is a small tmpfs this script mounts; a filler file fills it at a chosen
moment. One mode per persistence setting of Redis:

- ``aof_always``: ``appendonly yes``, ``appendfsync always`` (what the store asks
  for). Redis exits at the first AOF write that fails; it is started again while the
  disk is still full (as a supervisor would), then once space is freed.
- ``aof_everysec``: ``appendfsync everysec`` (``accept_lossy=true``). Redis refuses
  writes with ``MISCONF Errors writing to the AOF file``; a ``BGREWRITEAOF`` is asked
  for while the disk is full; the filler is removed and Redis takes writes again.
- ``rdb``: snapshots only (``save 1 1``, ``stop-writes-on-bgsave-error yes``,
  ``accept_lossy=true``). A ``BGSAVE`` fails, Redis refuses writes with ``MISCONF``
  until a snapshot succeeds after the filler is removed.

For each: ``/readyz`` of both instances (code, reason), what publishers, viewers and
a creator of sessions were told (error codes, close codes and reasons), each
instance's log lines, CPU seconds and RSS over the outage; then whether both recover
without a restart of Bamboo (ready, new acks, viewers fed). At the end Redis is killed
(SIGKILL) and started from its files, and a fresh resume from seq 0 of each session
is compared with what its publisher had acknowledged: an acked event missing under an
unchanged epoch is a problem (exit status 1), as is a traceback or no recovery.

Bounded: each phase lasts seconds, a mode about a minute; every process it starts is
stopped by its pid, and the tmpfs is unmounted, whatever happens. Not root: it says
so in one line and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import websockets.asyncio.client

from .redis_bad_day import Cluster, free_port, recovered
from .redis_bad_day_clients import (
    PATIENCE,
    Publisher,
    Tally,
    Viewer,
    create_sessions,
    hello,
    keep,
    publish,
    view,
)
from .redis_disk_full_checks import Sampler, compare, since, snapshot, tallies

MODES = ("aof_always", "aof_everysec", "rdb")
SESSIONS = 3
PREFIX = "bamboo"
SETTINGS = {
    "aof_always": ["--appendonly", "yes", "--appendfsync", "always", "--save", ""],
    "aof_everysec": ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
    "rdb": ["--appendonly", "no", "--save", "1 1", "--stop-writes-on-bgsave-error", "yes"],
}


class RedisOnTmpfs:
    """One redis-server on a fixed port, its ``dir`` on a tmpfs of ``size`` mounted at
    ``mount``; its log beside the run's other files, not on the tmpfs."""

    def __init__(self, mount: Path, log: Path, settings: list[str]) -> None:
        self.mount = mount
        self.log = log
        self.settings = settings
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.exits: list[int | None] = []  # the exit status of each run that ended

    def start(self, wait: float = 10.0) -> bool:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.mount), "--logfile", str(self.log), "--daemonize", "no"]
        argv += [*self.settings, "--rdb-key-save-delay", "0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if self.client().ping():
                    return True
            time.sleep(0.05)
        return False

    def client(self, timeout: float = 5) -> Any:
        return redis.Redis(port=self.port, socket_timeout=timeout, decode_responses=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> None:
        """Notes the exit of a run that ended by itself."""
        if self.proc is not None and self.proc.poll() is not None:
            self.exits.append(self.proc.returncode)
            self.proc = None

    def kill(self) -> None:
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.reap()

    def info(self) -> dict[str, Any]:
        keys = ("rdb_last_bgsave_status", "aof_last_write_status", "aof_last_bgrewrite_status")
        try:
            said = self.client(2).info("persistence")
        except redis.RedisError as error:
            return {"error": str(error)[:120]}
        return {k: said.get(k) for k in keys}

    def log_lines(self, *needles: str) -> dict[str, int]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return {n: text.count(n) for n in needles}


async def rejoin(viewer: Viewer, port: int) -> None:
    """A viewer that comes back every moment: a resume (``hello`` with ``last_seq``
    and ``epoch``, answered within ``PATIENCE`` or counted a hang by ``keep``), a
    second of live events checked for gaps, gone; again and again (``keep``)."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{viewer.session_id}"
    async with websockets.asyncio.client.connect(url, open_timeout=PATIENCE) as ws:
        resume = (
            {} if viewer.epoch is None else {"last_seq": viewer.last_seq, "epoch": viewer.epoch}
        )
        welcome = await hello(ws, **resume)
        if resume and not welcome["resumed"]:
            viewer.not_resumed += 1
        if not resume or not welcome["resumed"]:
            viewer.last_seq = welcome["last_seq"]
        viewer.epoch = welcome["epoch"]
        viewer.tally.errors["welcome"] = viewer.tally.errors.get("welcome", 0) + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "event":
                        if frame["seq"] != viewer.last_seq + 1:
                            viewer.problems.append(f"seq {frame['seq']} after {viewer.last_seq}")
                        viewer.last_seq = frame["seq"]


def mount_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], check=False)


def fill(path: Path) -> int:
    """Writes ``path`` until the file system refuses; the bytes written."""
    written = 0
    with contextlib.suppress(OSError), path.open("ab") as out:
        chunk = b"\0" * 65536
        while True:
            out.write(chunk)
            out.flush()
            written += len(chunk)
    return written


async def outage(mode: str, rds: RedisOnTmpfs, hold: float, crash: bool) -> dict[str, Any]:
    """Fills the disk, holds the outage, frees the space; what Redis did meanwhile."""
    seen: dict[str, Any] = {"filled_bytes": fill(rds.mount / "filler")}
    if mode == "rdb":
        with contextlib.suppress(redis.RedisError):
            seen["bgsave"] = str(rds.client().bgsave())
    await asyncio.sleep(hold / 2)
    seen["info_mid"] = rds.info()
    if mode == "aof_everysec":
        try:
            seen["bgrewriteaof"] = str(rds.client().bgrewriteaof())
        except redis.RedisError as error:
            seen["bgrewriteaof"] = str(error)[:120]
    if mode == "aof_always":
        rds.reap()
        seen["redis_exited"] = rds.exits[:]
        if not rds.running:  # a supervisor starts it again, on the disk still full
            seen["restart_on_full_disk"] = rds.start()
    await asyncio.sleep(hold / 2)
    rds.reap()
    seen["info_end"] = rds.info()
    seen["exits"] = rds.exits[:]
    if crash:  # Redis dies while its disk is full: what it acknowledged meanwhile?
        rds.kill()
    (rds.mount / "filler").unlink()
    if not rds.running:
        seen["restart_after_free"] = rds.start()
    return seen


async def run_mode(mode: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    mount = work / "redis-dir"
    mount.mkdir()
    mount_tmpfs(mount, args.size)
    rds = RedisOnTmpfs(mount, work / "redis.log", SETTINGS[mode])
    lossy = "" if mode == "aof_always" else "&accept_lossy=true"
    store = f"redis://127.0.0.1:{rds.port}/0?prefix={PREFIX}&heartbeat=3{lossy}"
    cluster = Cluster(work, store)
    tasks: list[asyncio.Task[None]] = []
    report: dict[str, Any] = {"mode": mode}
    try:
        if not rds.start():
            raise RuntimeError("redis-server did not start")
        cluster.start(0)
        cluster.start(1)
        pubs = [Publisher(f"s{n}") for n in range(SESSIONS)]
        viewers = [Viewer(f"s{n}", i) for n in range(SESSIONS) for i in (0, 1)]
        creator, created = Tally(), []  # type: ignore[var-annotated]
        tasks += [
            asyncio.create_task(
                keep(lambda port, p=p: publish(p, port), p.tally, cluster.live_ports)
            )
            for p in pubs
        ]
        await asyncio.sleep(1.0)  # the sessions exist before the viewers come
        tasks += [
            asyncio.create_task(
                keep(
                    lambda port, v=v: view(v, port),
                    v.tally,
                    lambda v=v: [cluster.ports[v.instance]],
                )
            )
            for v in viewers
        ]
        tasks.append(asyncio.create_task(create_sessions(created, creator, cluster.live_ports)))
        rejoiners = [Viewer(f"s{n}", n % 2) for n in range(SESSIONS)]
        tasks += [
            asyncio.create_task(
                keep(lambda port, v=v: rejoin(v, port), v.tally, cluster.live_ports)
            )
            for v in rejoiners
        ]
        await asyncio.sleep(args.warm)
        report["acked_before"] = sum(len(p.acked) for p in pubs)
        before = snapshot(cluster)
        sampler = Sampler(cluster)
        sampler.start()
        report["outage"] = await outage(mode, rds, args.hold, args.crash_while_full)
        report["during"] = since(cluster, before)
        report["readyz"] = await sampler.stop()
        report["recovery"] = await recovered(cluster, pubs, viewers)
        await asyncio.sleep(2.0)
        report["after"] = since(cluster, before)
        report["told"] = tallies(pubs, viewers, creator)
        report["told"]["rejoiners"] = tallies([], rejoiners, Tally())["viewers"]
        report["told"]["rejoiner_problems"] = [q for v in rejoiners for q in v.problems][:10]
        for task in tasks:
            task.cancel()
        _, running = await asyncio.wait(tasks, timeout=10)
        report["clients_left_running"] = len(running)  # their acks would come after
        tasks.clear()
        rds.kill()  # a crash of Redis, then a start from its files
        report["restart_from_files"] = rds.start(30)
        ready = await recovered(cluster, [], [])
        report["ready_after_restart"] = ready
        report["compare"] = await compare(cluster.ports[0], pubs)
        report["redis_log"] = rds.log_lines(
            "Short write",
            "Can't recover",
            "Background saving error",
            "MISCONF",
            "AOF write error looks solved",
            "Background saving terminated with success",
            "Background AOF rewrite",
            "Error",
        )
        report["created"] = len(created)
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        cluster.stop()
        rds.kill()
        unmount(mount)
    report["problems"] = problems_of(report)
    return report


def problems_of(report: dict[str, Any]) -> list[str]:
    problems = list(report["compare"]["problems"])
    if report["clients_left_running"]:
        problems.append(f"{report['clients_left_running']} clients did not stop when told")
    if report["compare"]["lost_same_epoch"]:
        problems.append(f"{report['compare']['lost_same_epoch']} acked events lost, same epoch")
    if "NOT_RECOVERED" in report["recovery"]:
        problems.append(f"not recovered: {report['recovery']}")
    tracebacks = sum(w["tracebacks"] for w in report["after"]["log"])
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the instances' logs")
    hangs = report["told"]["publishers"]["hangs"] + report["told"]["viewers"]["hangs"]
    if hangs:
        problems.append(f"{hangs} replies not come within the peers' patience")
    return problems


async def main(args: argparse.Namespace) -> int:
    reports = []
    for mode in args.modes.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"bamboo-redis-disk-full-{mode}-"))
        report = await asyncio.wait_for(run_mode(mode, args, work), args.deadline)
        report["work"] = str(work)
        print(json.dumps(report, indent=1), flush=True)
        reports.append(report)
    summary = {r["mode"]: r["problems"] or "ok" for r in reports}
    print(json.dumps({"summary": summary}))
    return 1 if any(r["problems"] for r in reports) else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--size", default="16m", help="the tmpfs's size")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds before the fill")
    parser.add_argument("--hold", type=float, default=12.0, help="seconds the disk stays full")
    parser.add_argument(
        "--crash-while-full", action="store_true", help="SIGKILL Redis before the space is freed"
    )
    parser.add_argument("--deadline", type=float, default=180.0, help="seconds a mode may take")
    if os.geteuid() != 0:
        print("redis_disk_full: skipped, mounting a tmpfs for Redis's dir needs root")
        sys.exit(0)
    sys.exit(asyncio.run(main(parser.parse_args())))
