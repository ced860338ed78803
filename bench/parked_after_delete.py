"""Reproducer (r328): sessions that expired and that the store's cleanup deleted stay in
the server's memory as parked actors, each with its replay ring counted against
``--memory-budget``, until ``--disconnect-retention`` (3,600 s) or the ``--max-sessions``
eviction (1,000) ends them. Under churn with a TTL shorter than the retention, RSS and
``bamboo_buffered_bytes`` therefore climb with every parked session, of sessions that no
longer exist, up to those bounds (bench/memory_plateau.py shows the curve).

It starts a server (``--default-ttl 2 --cleanup-interval 1``) on a temporary store,
creates ``--sessions`` sessions with a publisher each (``--events`` events of 1 KiB),
disconnects, waits until the store lists none of them and answers 404 for each, then
reads ``/metrics``. Exit status 1 when parked actors (and ring bytes) outlived their
sessions, 0 when the server let them go.

Run: ``python -m bench.parked_after_delete [--store jsonl|sqlite] [--sessions 20]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from . import common
from .memory_churn import Peer, http_get

GONE_TIMEOUT = 30.0  # seconds for the store's cleanup to delete every session


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("jsonl", "sqlite"), default="jsonl")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--events", type=int, default=200)
    return parser.parse_args()


async def fill(port: int, sid: str, events: int) -> None:
    peer = await Peer.attach(port, sid, {"user_id": sid, "create": True, "role": "agent"})
    for number in range(events):
        token = {"type": "token", "content": "x" * 1024}
        await peer.connection.send(json.dumps({"type": "event", "id": number, "event": token}))
    while peer.seq < events:  # acks carry seq; the publisher gets no events of its own
        frame = await peer.frame()
        if frame.get("type") == "ack":
            peer.seq = max(peer.seq, frame["seq"])
    await peer.connection.close()


async def all_gone(port: int, ids: list[str]) -> bool:
    deadline = time.monotonic() + GONE_TIMEOUT
    while time.monotonic() < deadline:
        _, listing = await http_get(port, "/api/v1/sessions?limit=1000")
        statuses = [(await http_get(port, f"/api/v1/sessions/{sid}"))[0] for sid in ids]
        if json.loads(listing)["total"] == 0 and set(statuses) == {404}:
            return True
        await asyncio.sleep(0.5)
    return False


async def gauges(port: int) -> dict[str, float]:
    _, body = await http_get(port, "/metrics")
    wanted = ("bamboo_live_actors", "bamboo_parked_actors", "bamboo_buffered_bytes")
    found = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[name] = float(value)
    return found


def rss_mib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return -1


async def main() -> int:
    args = parse_args()
    print(f"# python -m bench.parked_after_delete {' '.join(sys.argv[1:])}", flush=True)
    with common.workdir("parked-after-delete") as tmp:
        name = "sessions.db" if args.store == "sqlite" else "sessions"
        argv = [
            sys.executable, "-m", "bamboo_session.server", "serve",
            "--host", common.HOST, "--port", "{port}",
            "--store", f"{args.store}://{tmp / name}", "--log-format", "json",
            "--default-ttl", "2", "--cleanup-interval", "1", "--session-create-rate", "0",
        ]  # fmt: skip
        server = common.ServerProcess("bamboo", argv, tmp / "server.log").start()
        try:
            ids = [f"gone-{n}" for n in range(args.sessions)]
            await asyncio.gather(*(fill(server.port, sid, args.events) for sid in ids))
            print(f"filled: {gauges_line(await gauges(server.port))} rss={rss_mib(server.pid)}MiB")
            if not await all_gone(server.port, ids):
                print(f"the store still holds sessions after {GONE_TIMEOUT} s: no verdict")
                return 2
            await asyncio.sleep(3)  # a look or two of each parked actor (a third of the TTL)
            held = await gauges(server.port)
            print(f"all {len(ids)} deleted by cleanup (404, listing empty), 3 s later: "
                  f"{gauges_line(held)} rss={rss_mib(server.pid)}MiB")  # fmt: skip
        finally:
            print(f"# server pid {server.pid} stopped, status {server.terminate()}")
    if held.get("bamboo_parked_actors", 0) > 0:
        print("REPRODUCED: parked actors (and their rings) outlive their deleted sessions")
        return 1
    return 0


def gauges_line(found: dict[str, float]) -> str:
    return " ".join(f"{k.removeprefix('bamboo_')}={v:g}" for k, v in sorted(found.items()))


if __name__ == "__main__":
    sys.exit(common.run(main()))
