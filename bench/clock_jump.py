"""What a user sees when the wall clock of a running server jumps: an NTP step, a VM
resumed after hours, a clock set back by an hour (``python -m bench.clock_jump``; run
from a worktree with the shim on ``PYTHONPATH`` to test that worktree's code).

One server process runs under libfaketime (``apt-get install faketime``), its clock
offset read from a file this script rewrites while it runs (``FAKETIME_TIMESTAMP_FILE``,
``FAKETIME_NO_CACHE=1``); by default only the wall clock moves
(``FAKETIME_DONT_FAKE_MONOTONIC=1``: what an NTP step does), ``--monotonic`` moves the
monotonic clock with it (a VM whose monotonic clock counted its pause). On a Redis
store, redis-server keeps the real clock: the bamboo process's jump is a skew between
two machines' clocks. This script, and its peers, keep the real clock.

Each scenario starts a fresh store and server (``--default-ttl 3600``,
``--idle-timeout 2``, ``--cleanup-interval 1``, auth on), a session of its own TTL (600 s,
made through the storage API before the server starts), and peers: a keyed publisher
that resends what is not acknowledged and a resuming viewer on ``live``, a peer on
``watched`` that pings until the jump and is silent after it (``idle`` is due 2 s
later), a peer on ``live`` whose token expires in 1,800 s, and ``parked``, left with no
connection. It jumps the clock, watches for ``AFTER`` seconds, checks what the
listing, the sessions and the peers show; then kills the server (``kill -9``) with the
peers attached and starts it again with its clock an hour behind (a machine that boots
before NTP has set its clock), to see whether the restart parks what the dead server
left attached.

Bounded: each scenario takes about 20 s; every process it starts (servers,
redis-server) is stopped by its pid. Without libfaketime it says so in one line and
exits 0. Results: the findings per scenario, one line each, and the whole as JSON in
bench/out/clock_jump.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session, SessionState

from . import clock_jump_peers as peers
from .common import OUT_DIR, ServerProcess, workdir
from .redis_bad_day import Redis

LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
TTL, SHORT_TTL, IDLE = 3600, 600, 2.0
TOKEN_LIFE = 1800  # seconds the token holder's token has left, on the real clock
SETTLE, AFTER, RESTARTED = 3.0, 7.0, 2.0  # seconds before the jump, after it, after a restart
PHASE: dict[str, Any] = {}  # where the running scenario is, for a report should it stall
REDIS_RESTARTED = 6.0  # past the presence sweep of the dead instance (heartbeat=3: 4 s)
BOUND = 120.0  # seconds a scenario may take in all (the machine may be loaded)
JUMPS = {"past_expiry": 7200, "within_expiry": 1800, "back_hour": -3600, "none": 0}
RESTART_BEHIND = -3600  # the clock at the restart, against the clock at the kill
SESSIONS = ("live", "watched", "parked", "short")
TIMES = ("updated_at", "last_activity_at", "expires_at")


@dataclass(frozen=True)
class Scenario:
    store: str
    jump: str
    monotonic: bool = False

    @property
    def name(self) -> str:
        return f"{self.store}/{self.jump}" + ("/monotonic" if self.monotonic else "")


def faketime_library() -> str | None:
    return next((path for path in LIBRARIES if os.path.exists(path)), None)


def set_offset(path: Path, seconds: int) -> None:
    """The faked clock's offset, written whole (the library reads the file at each call)."""
    spare = path.with_suffix(".new")
    spare.write_text(f"{seconds:+d}\n")
    spare.replace(path)


def server(url: str, log: Path, library: str, offset: Path, monotonic: bool) -> ServerProcess:
    argv = [
        sys.executable,
        "-m",
        "bench.faketime_server",  # the server's CLI, with a sleep libfaketime lets through
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--store",
        url,
        "--default-ttl",
        str(TTL),
        "--idle-timeout",
        str(IDLE),
        "--cleanup-interval",
        "1",
        "--auth-secret",
        peers.SECRET,
        "--session-create-rate",
        "0",
        "--ping-interval",
        "1",
        "--ping-timeout",
        "5",
        "--log-format",
        "json",
        "--log-level",
        "info",
    ]
    process = ServerProcess("bamboo", argv, log)
    process.env = {
        **os.environ,
        "LD_PRELOAD": library,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "0" if monotonic else "1",
        "NO_FAKE_STAT": "1",  # file times stay the kernel's, as after a real step
    }
    return process


async def precreate(url: str) -> None:
    """``short``: a session of its own TTL, made through the storage API."""
    storage = await open_storage(url, default_ttl=TTL)
    try:
        await storage.create_session(Session.new("short", user_id="bench", ttl=SHORT_TTL))
        await storage.update_session_state("short", SessionState.DISCONNECTED)
    finally:
        await storage.close()


async def leave_parked(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/parked"
    async with connect(url, open_timeout=peers.PATIENCE) as ws:
        await peers.hello(ws, create=True)


async def snapshot(port: int) -> dict[str, Any]:
    """The listing (newest write first) and what a GET of each session answers."""
    listed = await peers.listing(port)
    found = {s["id"]: {k: s[k] for k in ("state", "epoch", "connections", *TIMES)} for s in listed}
    reachable = {sid: await peers.metadata(port, sid) is not None for sid in SESSIONS}
    _, stats = await peers.get(port, "/api/v1/stats")
    return {
        "order": [s["id"] for s in listed],
        "sessions": found,
        "reachable": reachable,
        "server_time": stats["time"] if stats else None,
    }


def counted(closes: list[str]) -> dict[str, int]:
    return {close: closes.count(close) for close in dict.fromkeys(closes)}


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


def went_back(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The times that moved backwards, per session of one epoch."""
    back = []
    for sid, old in before["sessions"].items():
        new = after["sessions"].get(sid)
        if new is None or new["epoch"] != old["epoch"]:
            continue
        back += [f"{sid}.{t}" for t in TIMES if old[t] and new[t] and when(new[t]) < when(old[t])]
    return back


async def lost_acks(url: str, pub: peers.Publisher) -> tuple[int, int]:
    """Of the keys acknowledged to the publisher, read through the storage API once the
    server is stopped, on the real clock: (gone with their epoch, lost from a log of
    theirs that is still there)."""
    storage = await open_storage(url, cleanup_interval=None)
    try:
        meta = await storage.get_metadata("live")
        epoch = None if meta is None else meta.epoch
        stored = {}
        if meta is not None:
            for event in await storage.read_events("live", 0, epoch=epoch):
                stored[event.seq] = getattr(event.event, "content", None)
    finally:
        await storage.close()
    gone = sum(1 for _, acked_epoch in pub.acked.values() if acked_epoch != epoch)
    lost = sum(
        1 for key, (seq, acked) in pub.acked.items() if acked == epoch and stored.get(seq) != key
    )
    return gone, lost


def log_problems(log: Path) -> list[str]:
    """Server log lines at warning or above, counted by event."""
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if entry.get("level") in ("warning", "error", "critical"):
                name = f"{entry['level']}: {str(entry.get('event'))[:70]}"
                counts[name] = counts.get(name, 0) + 1
    return [f"{n}x {name}" for name, n in counts.items()]


async def run_scenario(scenario: Scenario, work: Path, library: str) -> dict[str, Any]:
    offset = work / "offset"
    set_offset(offset, 0)
    rds = None
    if scenario.store == "redis":
        rds = Redis(work, lossy=False)
        rds.start()
        url = f"redis://127.0.0.1:{rds.port}/0?heartbeat=3"
    elif scenario.store == "sqlite":
        url = f"sqlite://{work / 'sessions.db'}"
    else:
        url = f"jsonl://{work / 'data'}"
    await precreate(url)
    bamboo = server(url, work / "server.log", library, offset, scenario.monotonic)
    PHASE.update(phase="start", log=bamboo.log_path, server=bamboo)
    await asyncio.to_thread(bamboo.start)
    pub = peers.Publisher("live")
    try:
        report = await observe(scenario, bamboo, offset, pub)
        PHASE["phase"] = "stop"
        await asyncio.to_thread(bamboo.terminate)
        PHASE["phase"] = "reading the store"
        report["acked_gone_with_expiry"], report["acked_lost"] = await lost_acks(url, pub)
        report["log"] = log_problems(work / "server.log")
        return report
    finally:
        bamboo.terminate()
        if rds is not None:
            rds.kill()


async def observe(
    scenario: Scenario, bamboo: ServerProcess, offset: Path, pub: peers.Publisher
) -> dict[str, Any]:
    port = bamboo.port
    PHASE.update(phase="peers", pid=bamboo.pid)
    await leave_parked(port)
    viewer = peers.Viewer("live")
    talking, watcher, holder = asyncio.Event(), peers.Tally(), peers.Tally()
    talking.set()
    tasks = [asyncio.create_task(peers.again(peers.publish, pub.tally, pub, port))]
    await asyncio.sleep(1)  # ``live`` made by its publisher
    tasks += [
        asyncio.create_task(peers.again(peers.view, viewer.tally, viewer, port)),
        asyncio.create_task(peers.again(peers.watch, watcher, "watched", port, talking, watcher)),
    ]
    holding = asyncio.create_task(peers.hold_token("live", port, TOKEN_LIFE, holder))
    try:
        await asyncio.sleep(SETTLE)
        PHASE["phase"] = "before the jump"
        before = await snapshot(port)
        acked_before, closes_before = len(pub.acked), len(pub.tally.closes)
        viewer_closes, watcher_closes = len(viewer.tally.closes), len(watcher.closes)
        set_offset(offset, JUMPS[scenario.jump])
        talking.clear()
        jumped = time.monotonic()
        PHASE["phase"] = "after the jump"
        await asyncio.sleep(1)
        born = await peers.born("born", port)  # a session made after the jump
        await asyncio.sleep(AFTER - 1)
        fresh_token = await peers.try_token("live", port, TOKEN_LIFE)
        PHASE["phase"] = "reading after the jump"
        after = await snapshot(port)
        times = await peers.log_times(port, "live")
        report: dict[str, Any] = {
            "before": before,
            "after": after,
            "went_back": went_back(before, after),
            "acks": [acked_before, len(pub.acked) - acked_before],
            "publisher_errors": dict(pub.tally.errors),
            "publisher_closes": counted(pub.tally.closes[closes_before:]),
            "epochs": len(pub.epochs),
            "viewer": {
                "gaps": viewer.gaps,
                "not_resumed": viewer.not_resumed,
                "closes": counted(viewer.tally.closes[viewer_closes:]),
            },
            "watcher_closes": counted(watcher.closes[watcher_closes:]),
            "token_holder": holder.closes
            + ([f"after {time.monotonic() - jumped:.1f} s"] if holding.done() else ["open"]),
            "fresh_token": fresh_token,
            "born": born,
            "ts_backwards": sum(1 for a, b in itertools.pairwise(times) if b < a),
        }
        bamboo.proc.kill()  # type: ignore[union-attr]  # kill -9, the peers attached
        bamboo.proc.wait(10)  # type: ignore[union-attr]
    finally:
        for task in (*tasks, holding):
            task.cancel()
        await asyncio.wait({*tasks, holding}, timeout=peers.PATIENCE)
    set_offset(offset, JUMPS[scenario.jump] + RESTART_BEHIND)
    PHASE["phase"] = "restart"
    await asyncio.to_thread(bamboo.start, port)
    PHASE.update(phase="after the restart", pid=bamboo.pid)
    await asyncio.sleep(RESTARTED if scenario.store != "redis" else REDIS_RESTARTED)
    restarted = await snapshot(port)
    report["restarted"] = restarted
    report["left_attached"] = [
        sid for sid, s in restarted["sessions"].items() if s["state"] in ("active", "idle")
    ]
    return report


def summary(name: str, r: dict[str, Any]) -> str:
    before, after = r["before"], r["after"]
    states = ", ".join(
        f"{sid} {before['sessions'].get(sid, {}).get('state', '-')}->"
        f"{after['sessions'].get(sid, {}).get('state', 'gone')}"
        + ("" if after["reachable"][sid] else " (404)")
        for sid in SESSIONS
    )
    return (
        f"{name}: {states}; acks {r['acks'][0]}+{r['acks'][1]}, publisher errors "
        f"{r['publisher_errors']}, closes {r['publisher_closes']}, epochs {r['epochs']}; "
        f"viewer {r['viewer']}; watcher {r['watcher_closes']}; token holder "
        f"{r['token_holder']}, fresh token {r['fresh_token']!r}; born {r['born']!r}; order after "
        f"{after['order']}; went back {r['went_back']}; ts backwards {r['ts_backwards']}; "
        f"left attached after restart {r['left_attached']}; acked gone with expiry "
        f"{r['acked_gone_with_expiry']}, acked lost {r['acked_lost']}; log {r['log']}; "
        f"{r['seconds']} s"
    )


def stalled(scenario: Scenario) -> str:
    """Where a scenario stood past its bound; the server's stacks (py-spy) and log go
    to bench/out for a post-mortem."""
    OUT_DIR.mkdir(exist_ok=True)
    name = scenario.name.replace("/", "-")
    spy, pid = Path(sys.executable).with_name("py-spy"), PHASE.get("pid")
    if pid is not None and spy.exists():
        dump = subprocess.run(
            [str(spy), "dump", "--pid", str(pid)], capture_output=True, timeout=60, check=False
        )
        (OUT_DIR / f"clock_jump-{name}-stacks.txt").write_bytes(dump.stdout + dump.stderr)
    if (log := PHASE.get("log")) is not None and log.exists():
        shutil.copy(log, OUT_DIR / f"clock_jump-{name}-server.log")
    process = PHASE["server"].proc if "server" in PHASE else None
    code = None if process is None else process.poll()
    return f"in {PHASE.get('phase')!r}, server pid {pid}, " + (
        "running" if code is None else f"exited with {code}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="jsonl,sqlite,redis")
    parser.add_argument("--jumps", default="past_expiry,within_expiry,back_hour")
    parser.add_argument("--monotonic", action="store_true", help="the monotonic clock jumps too")
    return parser.parse_args()


async def main(args: argparse.Namespace) -> int:
    library = faketime_library()
    if library is None:
        print("clock_jump: skipped, libfaketime is not installed (apt-get install faketime)")
        return 0
    results: dict[str, Any] = {}
    for store in args.stores.split(","):
        for jump in args.jumps.split(","):
            if args.monotonic and JUMPS[jump] < 0:
                print(f"{store}/{jump}/monotonic: skipped, a monotonic clock never goes back")
                continue
            scenario = Scenario(store, jump, args.monotonic)
            started = time.monotonic()
            with workdir("clock-jump") as work:
                PHASE.clear()
                running = asyncio.create_task(run_scenario(scenario, work, library))
                await asyncio.wait({running}, timeout=BOUND)
                if not running.done():
                    print(f"{scenario.name}: not done within {BOUND} s: {stalled(scenario)}")
                    running.cancel()
                    await asyncio.gather(running, return_exceptions=True)
                    continue
                result = running.result()
            result["seconds"] = round(time.monotonic() - started, 1)
            results[scenario.name] = result
            print(summary(scenario.name, result), flush=True)
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "clock_jump.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
