"""What does an outage of Redis longer than ``--disconnect-retention`` cost a server's log,
and does the state of every session parked through it reach the store afterwards?

A real redis-server (append-only) and a ``serve`` process on it, one peer attached to a
session of its own throughout (an instance that serves others). ``--sessions`` sessions
are created and left (parked: ``disconnected``); then as many again are attached and,
with Redis stopped (SIGTERM, a clean shutdown), left: their parks cannot be written.
Redis stays away ``--outage`` seconds, longer than ``--retention``, so their actors
leave memory still owing the state; then it starts again on the same port. Measured: the
server's log lines from the stop to ``--settle`` seconds after the restart, by event
(``log_lines``: all but the peers' own ``connection closed``); and how long until ``GET
/api/v1/sessions?state=disconnected`` lists every session (``--settle`` at most), with
how many the store still holds ``active`` or ``idle`` (a quiet session is ``idle`` after
``--look`` seconds).

With ``--stop``, the server is stopped (SIGTERM) once the outage has lasted
``--outage`` seconds: ``away``, before Redis starts again; ``back``, right after.
Another ``serve`` process (a new instance) then starts on the store, and what is
measured is how long the stop took, what its log said of the states still owed
(``owed states ... at stop``: written, left), how many sessions the new instance
lists ``disconnected`` as it starts (the keeper's among them), and how long after
Redis's start until it lists them all (by then a sweep of dead instances may have
parked what the stop left, a ``--heartbeat`` after the stopped one's last refresh).

``--look`` is the server's ``--idle-timeout``: each attached session looks at the store
that often (a read of its metadata), so the peers attached before the outage cost the
server ``--sessions / --look`` reads a second. At ``--look 1`` and a few thousand
sessions that fills its loop: the set-up's attaches, one after another, went at 7 to
25 a second, and one that waited past the store read timeout (5 s) closed 1011
``storage unavailable`` (bench/RESULTS.md). Past a thousand sessions give ``--look
30`` or more.

Which tree serves is the one ``python -m bamboo_session.server`` imports: run it twice,
with PYTHONPATH set to each tree's import shim, for a before and an after.

    python -m bench.parked_outage --sessions 500 --outage 8 --retention 3
    python -m bench.parked_outage --sessions 2000 --stop back --heartbeat 10 --settle 40
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .common import (
    HOST,
    add_common_args,
    bamboo_server,
    gather_bounded,
    ratio_line,
    run,
    workdir,
    write_json,
)

QUESTION = "parked_outage"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Redis:
    """redis-server on a fixed port and directory, stopped and started by its pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", HOST, "--save", ""]
        argv += ["--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always"]
        argv += ["--daemonize", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5) as probe:
                    probe.sendall(b"PING\r\n")
                    if probe.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer in 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


async def leave(port: int, session_id: str, *, create: bool) -> None:
    """A peer attaches (creating the session) and leaves."""
    async with connect(f"ws://{HOST}:{port}/api/v1/stream/{session_id}") as ws:
        await ws.send(json.dumps({"type": "hello", "create": create}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome


def listed(port: int, state: str) -> int:
    """How many sessions the store lists in ``state`` (None while it fails: -1)."""
    url = f"http://{HOST}:{port}/api/v1/sessions?state={state}&limit=1"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            total: int = json.load(answer)["total"]
            return total
    except OSError:
        return -1


def events_between(log: Path, start: datetime, end: datetime) -> collections.Counter[str]:
    """The server's log lines stamped within [start, end), by event. By their stamps,
    read once the server has stopped: its log file is written through a buffer."""
    counted: collections.Counter[str] = collections.Counter()
    for line in log.read_bytes().splitlines():
        try:
            record = json.loads(line)
            stamp = datetime.fromisoformat(record["timestamp"])
        except (ValueError, KeyError):
            continue
        if start <= stamp < end:
            counted[record["event"]] += 1
    return counted


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    redis = Redis(work / "redis")
    redis.directory.mkdir()
    redis.start()
    log = work / "server.log"
    url = f"redis://{HOST}:{redis.port}/0?prefix=bench&heartbeat={args.heartbeat:g}"
    options = ["--disconnect-retention", str(args.retention), "--idle-timeout", str(args.look)]
    server = bamboo_server(work / "data", log, "--store", url, "--log-level", "info", *options)
    server.start()
    stop: dict[str, Any] = {}
    try:
        ids = [f"s{n}" for n in range(args.sessions)]
        await gather_bounded([leave(server.port, i, create=True) for i in ids], 32)
        # A peer of another session, attached throughout: the instance keeps its
        # presence heartbeat, as one serving others does, and is not swept as dead.
        keeper = await connect(f"ws://{HOST}:{server.port}/api/v1/stream/keeper")
        await keeper.send(json.dumps({"type": "hello", "create": True}))
        json.loads(await keeper.recv())
        peers: list[ClientConnection] = []
        for session_id in ids:  # attached again, each left once Redis is away
            ws = await connect(f"ws://{HOST}:{server.port}/api/v1/stream/{session_id}")
            await ws.send(json.dumps({"type": "hello"}))
            try:
                json.loads(await ws.recv())
            except ConnectionClosed as closed:  # (docstring: --look)
                raise SystemExit(f"attach {len(peers) + 1} of {args.sessions}: {closed}") from None
            peers.append(ws)
        deadline = time.monotonic() + 30  # the attaches' state writes, then the listing
        while listed(server.port, "disconnected") != 0:  # active, or idle after --look
            assert time.monotonic() < deadline, listed(server.port, "disconnected")
            await asyncio.sleep(0.25)
        stopped = datetime.now(UTC)
        redis.stop()
        await gather_bounded([ws.close() for ws in peers], 64)
        await asyncio.sleep(args.outage)
        if args.stop == "away":
            stop = stop_server(server, log)
        redis.start()
        back = time.monotonic()
        if args.stop == "back":
            stop = stop_server(server, log)
        if args.stop != "none":  # a new instance reads, and sweeps what the stop left
            await keeper.close()
            server = bamboo_server(work / "data", work / "next.log", "--store", url, *options)
            server.start()
            stop["listed_as_next_starts"] = listed(server.port, "disconnected")
        reached = None
        # Stopped, the keeper's session is parked too (by the stop, or what it left).
        expected = args.sessions + (args.stop != "none")
        while time.monotonic() - back < args.settle:
            if listed(server.port, "disconnected") == expected and reached is None:
                reached = time.monotonic() - back
            await asyncio.sleep(0.25)
        settled = datetime.now(UTC)
        keeper_count = 1 if args.stop == "none" else 0  # its session is active until then
        active = listed(server.port, "active") + listed(server.port, "idle") - keeper_count
        await keeper.close()
    finally:
        server.terminate()
        redis.stop()
    events = events_between(log, stopped, settled)
    return {
        "sessions": args.sessions,
        "outage_s": args.outage,
        "retention_s": args.retention,
        "look_s": args.look,
        # Less each peer's own "connection closed", which any disconnect logs.
        "log_lines": sum(n for event, n in events.items() if event != "connection closed"),
        "events": dict(events.most_common()),
        "listed_disconnected_after_s": None if reached is None else round(reached, 2),
        "still_active_or_idle": active,
        "stop": stop,
    }


def stop_server(server: Any, log: Path) -> dict[str, Any]:
    """SIGTERM and the wait for the exit: how long it took, and what the log said of
    the states still owed."""
    began = time.monotonic()
    server.terminate()
    taken: dict[str, Any] = {"seconds": round(time.monotonic() - began, 2)}
    shutting_down = None
    for line in log.read_bytes().splitlines():
        record = json.loads(line) if line.startswith(b"{") else {}
        event = str(record.get("event", ""))
        if event == "shutting down":
            shutting_down = datetime.fromisoformat(record["timestamp"])
        if shutting_down is None:
            continue
        since = (datetime.fromisoformat(record["timestamp"]) - shutting_down).total_seconds()
        if event.startswith("owed states") and "at stop" in event:
            keys = ("event", "owed", "written", "already_parked", "dropped", "left")
            taken |= {key: record[key] for key in keys if key in record}  # as each tree logs
            taken["owed_line_s"] = round(since, 2)  # from "shutting down"
        elif event == "stopped":
            taken["stopped_line_s"] = round(since, 2)
    return taken


async def main(args: argparse.Namespace) -> int:
    with workdir("bamboo-parked-outage-") as work:
        results = await measure(args, work)
    print(json.dumps(results, indent=2))
    owed = args.sessions - max(results["still_active_or_idle"], 0)
    print(ratio_line(QUESTION, "states_reached_store", owed / args.sessions, "1.0"))
    print(ratio_line(QUESTION, "log_lines_per_session", results["log_lines"] / args.sessions, "0"))
    write_json(args.json, results)
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--outage", type=float, default=6.0, help="seconds Redis is away")
    parser.add_argument("--retention", type=float, default=2.0, help="--disconnect-retention")
    parser.add_argument("--look", type=float, default=1.0, help="--idle-timeout: a look each")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds watched after")
    parser.add_argument("--heartbeat", type=float, default=30.0, help="the store's presence")
    parser.add_argument("--stop", choices=("none", "away", "back"), default="none")
    add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    raise SystemExit(run(main(parse_args())))
