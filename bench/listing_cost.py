"""What does a session listing cost the server, and is a peer that floods costly
listings held to its read allowance? (``GET /api/v1/sessions``; r478 found a listing
charged a sixteenth of its answer, r479 charges the sessions it examined, h494 measures
every order, an admin's listing of every session, and a history page to weigh a
listing's charge against.)

A store is seeded through its own API with ``--sessions`` sessions of user ``heavy``
(the default ``--max-stored-sessions-per-user``) and 200 of another user, the first of
``heavy``'s with ``HISTORY_MESSAGES`` messages of about 1 KB, then served by a real
``serve`` under auth, from this tree, and from ``--against`` (a PYTHONPATH, ``-`` for
the virtualenv's own install, i.e. /work/main) in the same invocation:

1. cost: the requests below in turn, ``--requests`` rounds, one connection each, with
   the token of ``heavy`` (``admin ...``: of an admin, whose listing is of every
   session), the server started with ``--rate-limit-bytes 0`` (no allowance: every
   answer is a 200); the server's CPU per request (its kernel CPU clock: the median of
   each kind's, and the mean), its ratio to ``/healthz``'s, and the answer's size (a
   page is charged a sixteenth of it, a listing 32 bytes more for each session it
   examined: server/http_pages.py);
2. flood: the server at its default allowance, ``--clients`` clients of ``heavy``
   asking for a listing whose title matches none of its sessions back to back for
   ``--flood-seconds``, and one asking ``/healthz`` every 50 ms meanwhile: listings a
   second, their statuses, the server's CPU a second, ``/healthz``'s p50 and p95.

Run: ``python -m bench.listing_cost [--store jsonl sqlite] [--sessions 10000]
[--requests 40] [--clients 4] [--flood-seconds 8] [--against -]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jwt

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Message, Session, SessionMetadata

from . import common

SECRET = "listing-cost-" + "s" * 32
IN_FLIGHT = 64  # creates at a time while seeding
# A server is measured once settled: its CPU under SETTLED_CPU a second over a half
# second, or WARM_UP seconds after its start at most. A fixed 2 s was not enough at
# 100,000 sessions on a loaded machine: the open's own work (checkpoints, a recount)
# went on into the first tree's requests (5 ms for ?limit=1, against 0.8 ms after).
SETTLED_CPU = 0.02
WARM_UP = 60.0
HISTORY_SESSION = "heavy-000000"
HISTORY_MESSAGES = 1000  # of about 1 KB: a page of 1,000 is the default 1 MiB's worth
LISTING = "/api/v1/sessions?limit=1"
REQUESTS = {
    "/healthz": "/healthz",
    "no match, limit=1": "/api/v1/sessions?title_contains=zzz&limit=1",
    "limit=1": LISTING,
    "message_count asc, limit=1": LISTING + "&sort_by=message_count&sort_order=asc",
    "message_count desc, limit=1": LISTING + "&sort_by=message_count",
    "updated_at desc, limit=1": LISTING + "&sort_by=updated_at",
    "last_activity_at asc, limit=1": LISTING + "&sort_by=last_activity_at&sort_order=asc",
    "message_count, cursor": LISTING + "&sort_by=message_count&cursor={cursor}",
    "admin no match, limit=1": "/api/v1/sessions?title_contains=zzz&limit=1",
    "admin limit=1": LISTING,
    "admin message_count, limit=1": LISTING + "&sort_by=message_count",
    "history page, limit=1000": f"/api/v1/sessions/{HISTORY_SESSION}?limit=1000",
}
NO_MATCH = REQUESTS["no match, limit=1"]


def token(sub: str, role: str = "user") -> str:
    claims = {"sub": sub, "role": role, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer_for(name: str) -> str:
    return token("root", "admin") if name.startswith("admin") else token("heavy")


def store_url(kind: str, directory: Path) -> str:
    if kind == "jsonl":
        return f"jsonl://{directory / 'data'}?durability=os"
    return f"sqlite://{directory / 'bamboo.db'}"


async def seed(url: str, sessions: int) -> None:
    storage = await open_storage(url)
    try:
        made = [("heavy", number) for number in range(sessions)]
        made += [("other", number) for number in range(200)]

        async def create(user: str, number: int) -> None:
            metadata = SessionMetadata(
                id=f"{user}-{number:06d}", user_id=user, title=f"chat {number}"
            )
            await storage.create_session(Session(metadata=metadata))

        await common.gather_bounded([create(user, n) for user, n in made], IN_FLIGHT)
        for number in range(HISTORY_MESSAGES):
            text = f"message {number} " + "x" * 1000
            await storage.append_message(HISTORY_SESSION, Message.user(text))
    finally:
        await storage.close()


def server(url: str, log: Path, pythonpath: str, *extra: str) -> common.ServerProcess:
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--host", common.HOST]
    argv += ["--port", "{port}", "--store", url, "--auth-secret", SECRET]
    argv += ["--log-format", "json", "--log-level", "warning", *extra]
    process = common.ServerProcess("bamboo", argv, log)
    process.env = dict(os.environ)
    if pythonpath == "-":
        process.env.pop("PYTHONPATH", None)
    else:
        process.env["PYTHONPATH"] = pythonpath
    return process


async def fetch(port: int, path: str, bearer: str) -> tuple[int, bytes]:
    """The status and the body of a GET of ``path``, its answer read whole, on a
    connection of its own."""
    reader, writer = await asyncio.open_connection(common.HOST, port)
    head = f"GET {path} HTTP/1.1\r\nHost: {common.HOST}\r\nAuthorization: Bearer {bearer}\r\n\r\n"
    writer.write(head.encode())
    answer = await reader.read()
    writer.close()
    status = int(answer[9:12]) if answer[:5] == b"HTTP/" else 0
    return status, answer.partition(b"\r\n\r\n")[2]


async def get(port: int, path: str, bearer: str) -> int:
    return (await fetch(port, path, bearer))[0]


async def resolved(port: int) -> dict[str, str]:
    """The requests' paths, the cursor filled in: the middle of ``heavy``'s sessions
    by message count (a keyset page from there)."""
    middle = f"{LISTING}&sort_by=message_count&offset=50"
    _status, body = await fetch(port, middle, token("heavy"))
    cursor = json.loads(body)["next_cursor"]
    return {name: path.format(cursor=cursor) for name, path in REQUESTS.items()}


async def settle(pid: int) -> None:
    """Once the server at ``pid`` idles (or ``WARM_UP`` has passed)."""
    deadline = time.monotonic() + WARM_UP
    while time.monotonic() < deadline:
        before = common.cpu_seconds(pid)
        await asyncio.sleep(0.5)
        if common.cpu_seconds(pid) - before < SETTLED_CPU / 2:
            return


async def costs(port: int, pid: int, requests: int) -> dict[str, Any]:
    """Each request's server CPU, the kinds taken in turn ``requests`` times: the
    median of each kind's (and the mean), so that the store's own work meanwhile (a
    chunk of checkpoints every few seconds after an open of 100,000 sessions, a count
    of them for the metrics) lands in a few requests of every kind, not in all of one
    kind's, and the median leaves it out."""
    # The store's own work after its open (a checkpoint, a recount) is not a request's.
    await settle(pid)
    paths = await resolved(port)
    spent: dict[str, list[float]] = {name: [] for name in paths}
    statuses: dict[str, set[int]] = {name: set() for name in paths}
    answers: dict[str, int] = {}
    for name, path in paths.items():
        status, body = await fetch(port, path, bearer_for(name))
        statuses[name].add(status)
        answers[name] = len(body)
    for _ in range(requests):
        for name, path in paths.items():
            bearer = bearer_for(name)
            before = common.cpu_seconds(pid)
            statuses[name].add(await get(port, path, bearer))
            spent[name].append((common.cpu_seconds(pid) - before) * 1000)
    return {
        name: {
            "ms": statistics.median(spent[name]),
            "mean_ms": statistics.fmean(spent[name]),
            "statuses": sorted(statuses[name]),
            "answer_bytes": answers[name],
        }
        for name in paths
    }


async def flood(port: int, pid: int, clients: int, seconds: float) -> dict[str, Any]:
    await settle(pid)
    bearer = token("heavy")
    statuses: dict[int, int] = {}
    waits: list[float] = []
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            status = await get(port, NO_MATCH, bearer)
            statuses[status] = statuses.get(status, 0) + 1

    async def prober() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            await get(port, "/healthz", bearer)
            waits.append(time.monotonic() - started)
            await asyncio.sleep(0.05)

    before, started = common.cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)), prober())
    elapsed = time.monotonic() - started
    waits.sort()
    return {
        "listings_per_s": sum(statuses.values()) / elapsed,
        "statuses": statuses,
        "cpu_s_per_s": (common.cpu_seconds(pid) - before) / elapsed,
        "healthz_p50_ms": common.percentile(waits, 0.5) * 1000,
        "healthz_p95_ms": common.percentile(waits, 0.95) * 1000,
    }


async def measure(
    url: str, work: Path, pythonpath: str, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    unlimited = server(url, work / "cost.log", pythonpath, "--rate-limit-bytes", "0").start()
    try:
        result["cost"] = await costs(unlimited.port, unlimited.pid, args.requests)
    finally:
        unlimited.terminate()
    limited = server(url, work / "flood.log", pythonpath).start()
    try:
        result["flood"] = await flood(limited.port, limited.pid, args.clients, args.flood_seconds)
    finally:
        limited.terminate()
    return result


def report(kind: str, tree: str, result: dict[str, Any]) -> None:
    healthz = result["cost"]["/healthz"]["ms"]
    for name, cost in result["cost"].items():
        ratio = cost["ms"] / healthz if healthz else float("nan")
        figures = f"{cost['ms']:7.2f} ms CPU/req (mean {cost['mean_ms']:7.2f})"
        figures += f" {ratio:6.1f}x /healthz {cost['statuses']}"
        print(f"{kind:6s} {tree:8s} {name:30s} {figures} {cost['answer_bytes']:8d} B")
    f = result["flood"]
    print(
        f"{kind:6s} {tree:8s} flood: {f['listings_per_s']:.1f} listings/s {f['statuses']}, "
        f"server CPU {f['cpu_s_per_s']:.2f} s/s, /healthz p50 {f['healthz_p50_ms']:.1f} ms "
        f"p95 {f['healthz_p95_ms']:.1f} ms"
    )


async def main(args: argparse.Namespace) -> None:
    trees = [("this", os.environ.get("PYTHONPATH", "-"))]
    if args.against is not None:
        trees.append(("against", args.against))
    results: dict[str, Any] = {"machine": common.machine(), "command": common.command_line()}
    for kind in args.store:
        with common.workdir(f"listing-cost-{kind}-") as work:
            url = store_url(kind, work)
            started = time.monotonic()
            await seed(url, args.sessions)
            took = time.monotonic() - started
            print(f"{kind}: seeded {args.sessions} + 200 sessions in {took:.1f} s")
            for tree, pythonpath in trees:
                results[f"{kind}/{tree}"] = found = await measure(url, work, pythonpath, args)
                report(kind, tree, found)
        if args.against is not None:
            this, against = results[f"{kind}/this"]["cost"], results[f"{kind}/against"]["cost"]
            for name in REQUESTS:
                ratio = (
                    this[name]["ms"] / against[name]["ms"] if against[name]["ms"] else float("nan")
                )
                print(f"RATIO {kind} {name}: this/against CPU per request {ratio:.3f}")
    common.write_json(args.json, results)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", nargs="+", choices=("jsonl", "sqlite"), default=["jsonl", "sqlite"]
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--flood-seconds", type=float, default=8.0)
    parser.add_argument(
        "--against", help="PYTHONPATH of the tree to compare with ('-': the venv's)"
    )
    common.add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    common.run(main(parse()))
