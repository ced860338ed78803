"""Runs a server out of disk on a real, small tmpfs and holds it to what it acknowledged.

Run as root (it mounts and remounts a tmpfs)::

    PYTHONPATH=/work/wt/r340.shim .venv/bin/python -m bench.disk_full_soak --store jsonl

Phases, each bounded in time: publishers (keyed events and messages) and resuming
viewers fill the disk; a file from outside fills it too; sessions are created until the
inodes run out; the mount goes read-only and back; the server is killed with SIGKILL at
random instants (while full, while space is freed) and started again. After each start
the store is read back over HTTP: every acknowledged key stored once, at its acked seq,
seqs 1..N with no gap, every seq a viewer saw stored with the same key, every created
session there. During faults /readyz, /metrics, the server's RSS and its log lines are
sampled. Prints one JSON object; exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from .disk_full_clients import (
    Outcomes,
    Publisher,
    Viewer,
    keep_creating,
    keep_publishing,
    keep_viewing,
)
from .disk_full_env import MOUNT, Server, fill, metric, mount, remount, stored_log, unmount


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(args.workdir)
        self.work.mkdir(parents=True, exist_ok=True)
        data = MOUNT / "data"
        url = f"jsonl://{data}" if args.store == "jsonl" else f"sqlite://{data}/store.db"
        self.server = Server(url, self.work / "server.log")
        self.outcomes = Outcomes()
        self.pubs = [Publisher(f"pub-{n}", args.padding) for n in range(args.publishers)]
        self.viewers = [Viewer(p.session_id) for p in self.pubs]
        self.created: list[str] = []
        self.stop_clients = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.problems: list[str] = []
        self.phases: list[dict[str, Any]] = []
        self.restarts = 0

    def start_clients(self) -> None:
        self.stop_clients = asyncio.Event()
        port = self.server.port
        for pub in self.pubs:
            self.tasks.append(
                asyncio.create_task(keep_publishing(port, pub, self.outcomes, self.stop_clients))
            )
        for viewer in self.viewers:
            self.tasks.append(
                asyncio.create_task(keep_viewing(port, viewer, self.outcomes, self.stop_clients))
            )

    async def stop_all_clients(self) -> None:
        self.stop_clients.set()
        if not self.tasks:
            return
        await asyncio.wait(self.tasks, timeout=30)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []

    async def observe(self, name: str, seconds: float) -> dict[str, Any]:
        """Samples /readyz, /metrics, RSS and the log's growth for ``seconds``."""
        lines_before = self.log_lines()
        failed_before = metric((await self.server.get("/metrics"))[1], "bamboo_events_failed_total")
        readyz: dict[str, int] = {}
        rss: list[int] = []
        reasons: set[str] = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status, body = await self.server.get("/readyz")
            readyz[str(status)] = readyz.get(str(status), 0) + 1
            if status != 200:
                reasons.add(body.strip()[:160])
            rss.append(self.server.rss_kib())
            await asyncio.sleep(0.5)
        failed_after = metric((await self.server.get("/metrics"))[1], "bamboo_events_failed_total")
        phase = {
            "phase": name,
            "readyz": readyz,
            "not_ready_reasons": sorted(reasons)[:4],
            "events_failed": failed_after - failed_before,
            "log_lines": self.log_lines() - lines_before,
            "rss_kib": [min(rss, default=0), max(rss, default=0)],
            "acked": sum(len(p.acked) for p in self.pubs),
        }
        self.phases.append(phase)
        print(json.dumps(phase), file=sys.stderr, flush=True)
        return phase

    def log_lines(self) -> int:
        with self.server.log_path.open("rb") as log:
            return sum(1 for _ in log)

    async def restart(self, why: str) -> None:
        """SIGKILL, then a start on the same data dir; a start that fails is a problem."""
        self.server.kill()  # first: the clients' requests in flight are cut
        await self.stop_all_clients()
        self.restarts += 1
        self.server.start()
        if not await self.server.wait_ready(30):
            self.problems.append(f"the server did not start after a kill {why}")
            return
        await self.verify(f"after a kill {why}")
        self.start_clients()

    async def verify(self, when: str) -> None:
        for pub, viewer in zip(self.pubs, self.viewers, strict=True):
            records, problem = await stored_log(self.server, pub.session_id)
            if problem:
                self.problems.append(f"{when}: {problem}")
                continue
            self.problems += [f"{when}: {p}" for p in check_log(pub, viewer, records)]
        for session_id in self.created:
            status, body = await self.server.get(f"/api/v1/sessions/{session_id}?limit=1")
            if status != 200:
                self.problems.append(f"{when}: created session {session_id}: {status} {body[:120]}")

    async def wait_for(self, name: str, condition: Any, seconds: float) -> float | None:
        """Seconds until ``condition()`` (a coroutine function) held, or None."""
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            if await condition():
                return round(time.monotonic() - began, 2)
            await asyncio.sleep(0.25)
        self.problems.append(f"{name}: not within {seconds} s")
        return None

    async def failing(self) -> bool:
        return (
            metric((await self.server.get("/metrics"))[1], "bamboo_events_failed_total")
            > self.failed_mark
        )

    async def ready(self) -> bool:
        return (await self.server.get("/readyz"))[0] == 200

    async def acks_grow(self) -> bool:
        count = sum(len(p.acked) for p in self.pubs)
        await asyncio.sleep(1.0)
        return sum(len(p.acked) for p in self.pubs) > count

    async def mark_failures(self) -> None:
        self.failed_mark = metric(
            (await self.server.get("/metrics"))[1], "bamboo_events_failed_total"
        )

    async def run(self) -> dict[str, Any]:
        ballast = MOUNT / "ballast"
        ballast.write_bytes(b"b" * self.args.ballast)
        inode_ballast = [MOUNT / f"inode-{n}" for n in range(self.args.inode_ballast)]
        for path in inode_ballast:
            path.touch()
        self.server.start()
        if not await self.server.wait_ready(30):
            raise SystemExit("the server did not start")
        self.start_clients()
        await self.observe("warm", 3)
        timings: dict[str, float | None] = {}
        # 1. the clients fill the disk
        await self.mark_failures()
        timings["filled_by_clients"] = await self.wait_for("fill by clients", self.failing, 90)
        await self.observe("full (clients)", self.args.hold)
        await self.restart("while full")
        await self.observe("full after restart", 4)
        # 2. space comes back: the server should recover by itself (the publishers
        # slowed down, so that what was freed lasts the soak)
        for pub in self.pubs:
            pub.pause, pub.padding = self.args.pause, 100
        ballast.unlink()
        timings["ready_after_free"] = await self.wait_for("ready after free", self.ready, 20)
        timings["acks_after_free"] = await self.wait_for("acks after free", self.acks_grow, 20)
        await self.observe("freed", 3)
        # 3. a file from outside fills it while clients run; a kill while freeing
        filler = MOUNT / "filler"
        await self.mark_failures()
        await asyncio.to_thread(fill, filler)
        timings["failing_after_outside_fill"] = await self.wait_for(
            "fail after outside fill", self.failing, 30
        )
        await self.observe("full (outside)", self.args.hold)
        filler.unlink()
        await asyncio.sleep(self.rng.uniform(0, 0.5))
        await self.restart("while freeing")
        timings["ready_after_outside_free"] = await self.wait_for(
            "ready after outside free", self.ready, 20
        )
        # 4. inodes run out: sessions created until refused
        creating = asyncio.create_task(
            keep_creating(self.server.port, self.created, self.outcomes, self.stop_clients, "many")
        )
        self.tasks.append(creating)
        await self.observe("inodes (creating)", self.args.hold)
        creating.cancel()
        await asyncio.gather(creating, return_exceptions=True)
        self.tasks.remove(creating)
        for path in inode_ballast:
            path.unlink()
        timings["ready_after_inodes"] = await self.wait_for(
            "ready after inodes freed", self.ready, 20
        )
        await self.restart("after inodes")
        # 5. read-only and back. Linux refuses a read-only remount while a file on
        # it is open for writing (EBUSY): the server holds its logs open, so it is
        # killed first, started on the read-only mount, then killed and the mount
        # made writable again.
        await self.stop_all_clients()
        self.server.kill()
        remount("ro")
        self.server.start()
        started = await self.server.wait_ready(15)
        self.start_clients()
        readonly = await self.observe("read-only", self.args.hold if started else 0)
        readonly["started"] = started
        readonly["exit"] = self.server.proc.poll() if self.server.proc else None
        await self.stop_all_clients()
        self.server.kill()
        remount("rw")
        await self.restart("after rw")
        timings["ready_after_rw"] = await self.wait_for("ready after rw", self.ready, 20)
        timings["acks_after_rw"] = await self.wait_for("acks after rw", self.acks_grow, 20)
        # 6. kills at random instants while full and while freeing
        for round_ in range(self.args.kill_rounds):
            await asyncio.to_thread(fill, filler)
            await asyncio.sleep(self.rng.uniform(0, 2))
            await self.restart(f"while full, round {round_}")
            filler.unlink()
            await asyncio.sleep(self.rng.uniform(0, 1))
            await self.restart(f"after freeing, round {round_}")
        await self.observe("end", 3)
        return timings

    async def finish(self) -> None:
        """Every unacknowledged request sent again until acked, then a last check."""
        await self.stop_all_clients()
        self.stop_clients = asyncio.Event()
        for pub in self.pubs:
            pub.padding = 0
        tasks = [
            asyncio.create_task(
                keep_publishing(self.server.port, p, self.outcomes, self.stop_clients)
            )
            for p in self.pubs
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_acked(), 30)
        self.stop_clients.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.server.kill()
        self.server.start()
        if await self.server.wait_ready(30):
            await self.verify("at the end")
        else:
            self.problems.append("the server did not start at the end")

    async def all_acked(self) -> None:
        while any(p.unacked for p in self.pubs):  # noqa: ASYNC110 (polls the clients' records)
            await asyncio.sleep(0.2)


def check_log(pub: Publisher, viewer: Viewer, records: list[tuple[int, str]]) -> list[str]:
    problems = []
    seqs = [seq for seq, _ in records]
    if seqs != list(range(1, len(seqs) + 1)):
        problems.append(f"{pub.session_id}: seqs are not 1..{len(seqs)}")
    seq_of_key: dict[str, int] = {}
    for seq, key in records:
        if key in seq_of_key:
            problems.append(f"{pub.session_id}: key {key} stored twice ({seq_of_key[key]}, {seq})")
        seq_of_key[key] = seq
    for key, seq in pub.acked.items():
        if seq_of_key.get(key) != seq:
            problems.append(f"{key}: acked as {seq}, stored as {seq_of_key.get(key)}")
    stored = dict(records)
    for seq, key in viewer.seen.items():
        if stored.get(seq) != key:
            problems.append(
                f"viewer of {pub.session_id} saw seq {seq} as {key}, stored {stored.get(seq)}"
            )
    return problems[:10]


def log_summary(path: Path) -> dict[str, Any]:
    events: dict[str, int] = {}
    tracebacks = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            tracebacks += line.startswith("Traceback")
            events["<not json>"] = events.get("<not json>", 0) + 1
            continue
        if entry.get("level") in ("error", "warning", "critical") or "exception" in entry:
            name = f"{entry.get('level')}: {str(entry.get('event'))[:90]}"
            events[name] = events.get(name, 0) + 1
            tracebacks += "exception" in entry
    top = sorted(events.items(), key=lambda item: -item[1])[:15]
    return {"tracebacks": tracebacks, "warnings_and_errors": dict(top)}


async def main_async(args: argparse.Namespace) -> int:
    mount(args.size, args.inodes)
    soak = Soak(args)
    timings: dict[str, float | None] = {}
    try:
        timings = await asyncio.wait_for(soak.run(), args.deadline)
        await soak.finish()
    except TimeoutError:
        soak.problems.append(f"the soak did not end within {args.deadline} s")
    finally:
        await soak.stop_all_clients()
        soak.server.stop()
        with contextlib.suppress(OSError):
            remount("rw")
        unmount()
    outcomes = soak.outcomes
    result = {
        "store": args.store,
        "timings": timings,
        "restarts": soak.restarts,
        "acked": sum(len(p.acked) for p in soak.pubs),
        "unacked_at_end": sum(len(p.unacked) for p in soak.pubs),
        "created_sessions": len(soak.created),
        "errors": dict(outcomes.errors),
        "error_messages": dict(outcomes.error_messages.most_common(6)),
        "closes": {str(k): v for k, v in outcomes.closes.items()},
        "log": log_summary(soak.server.log_path),
        "problems": (soak.problems + outcomes.problems)[:40],
        "phases": soak.phases,
    }
    print(json.dumps(result, indent=2))
    if not result["problems"]:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 1 if result["problems"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite"), default="jsonl")
    parser.add_argument("--size", default="8m", help="the tmpfs's size")
    parser.add_argument("--inodes", type=int, default=200, help="the tmpfs's inodes")
    parser.add_argument(
        "--ballast", type=int, default=2 << 20, help="bytes freed after the first fill"
    )
    parser.add_argument(
        "--inode-ballast", type=int, default=20, help="inodes freed after the inode phase"
    )
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--padding", type=int, default=2000, help="bytes of each event's content")
    parser.add_argument("--pause", type=float, default=0.5, help="publishers' pause after the fill")
    parser.add_argument("--hold", type=float, default=6.0, help="seconds each fault is held")
    parser.add_argument("--kill-rounds", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds the soak may take")
    parser.add_argument("--seed", type=int, default=340)
    parser.add_argument("--workdir", default="/tmp/r340-soak")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the soak mounts a tmpfs")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
