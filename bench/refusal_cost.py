"""What does a refusal cost the server when its peer ignores ``Retry-After`` and asks
again at once, against the cheapest answers it gives anyone? (r479: a flood of 429s
cost some 1,270 refusals a second of server CPU, which no allowance bounds.)

Every answer on the port closes its connection (one request per connection: a request
pipelined behind another, or sent after the answer on a keep-alive connection, gets
nothing), so each refusal costs its peer a TCP handshake already. What is left to
know is what the server pays for one, next to what any peer may have for nothing.

A real ``serve`` from this tree (and from ``--against``, a PYTHONPATH, ``-`` for the
virtualenv's own install, in the same invocation), its read allowance 1 byte a second
(``--rate-limit-bytes 1 --rate-limit-bytes-burst 1``: one listing puts its asker in
debt for seconds); ``--clients`` clients ask back to back for ``--seconds`` each kind,
each request on a connection of its own, read to its end:

- ``connect, close``: a connection opened and closed with nothing sent (the floor);
- ``/healthz``: 200, the cheapest answer, for anyone;
- ``404``: ``/nowhere``;
- ``429``: ``GET /api/v1/sessions`` from an address in debt (no auth);
- ``401`` and ``429 auth``: the same under ``--auth-secret``, without a token, and
  with the token of a user in debt (its HS256 signature checked each time).

Per kind: answers a second, the server's CPU a second (its kernel CPU clock), and
answers per second of server CPU, with the ratio of CPU per answer to ``/healthz``'s.
Also the answers a connection gets to three pipelined requests (1: one per connection).

Run: ``python -m bench.refusal_cost [--clients 4] [--seconds 5] [--against -]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import jwt

from . import common

SECRET = "refusal-cost-" + "s" * 32
WARM_UP = 1.0  # seconds a server is left to settle before it is measured
LISTING = "/api/v1/sessions?limit=1"


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def server(work: Path, pythonpath: str, auth: bool) -> common.ServerProcess:
    name = "auth" if auth else "open"
    argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--host", common.HOST]
    argv += ["--port", "{port}", "--data-dir", str(work / f"data-{name}")]
    argv += ["--rate-limit-bytes", "1", "--rate-limit-bytes-burst", "1"]
    argv += ["--log-format", "json", "--log-level", "warning", "--max-connections", "0"]
    if auth:
        argv += ["--auth-secret", SECRET]
    process = common.ServerProcess("bamboo", argv, work / f"{name}.log")
    process.env = dict(os.environ)
    if pythonpath == "-":
        process.env.pop("PYTHONPATH", None)
    else:
        process.env["PYTHONPATH"] = pythonpath
    return process


def request(path: str | None, bearer: str | None = None) -> bytes:
    """The bytes a client sends: a GET of ``path``, or nothing (None)."""
    if path is None:
        return b""
    authorization = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    return f"GET {path} HTTP/1.1\r\nHost: {common.HOST}\r\n{authorization}\r\n".encode()


async def exchange(port: int, data: bytes) -> bytes:
    """``data`` sent on a connection of its own; what came back, read to its end."""
    reader, writer = await asyncio.open_connection(common.HOST, port)
    try:
        if not data:
            return b""
        writer.write(data)
        return await reader.read()
    finally:
        writer.close()


async def flood(port: int, pid: int, data: bytes, clients: int, seconds: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    stop = time.monotonic() + seconds

    async def client() -> None:
        while time.monotonic() < stop:
            answer = await exchange(port, data)
            status = answer[9:12].decode() if answer[:5] == b"HTTP/" else "none"
            statuses[status] = statuses.get(status, 0) + 1

    before, started = common.cpu_seconds(pid), time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - started
    cpu = common.cpu_seconds(pid) - before
    answers = sum(statuses.values())
    return {
        "statuses": statuses,
        "per_s": answers / elapsed,
        "cpu_s_per_s": cpu / elapsed,
        "per_cpu_s": answers / cpu if cpu else float("nan"),
        "cpu_us": cpu / answers * 1e6 if answers else float("nan"),
    }


async def measure(work: Path, pythonpath: str, args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for auth in (False, True):
        process = server(work, pythonpath, auth).start()
        try:
            await asyncio.sleep(WARM_UP)
            bearer = token("flooder") if auth else None
            await exchange(process.port, request(LISTING, bearer))  # in debt from here
            if auth:
                kinds = {"401": request(LISTING), "429 auth": request(LISTING, bearer)}
            else:
                pipelined = await exchange(process.port, request(LISTING) * 3)
                found["answers to 3 pipelined"] = pipelined.count(b"HTTP/1.1 ")
                kinds = {
                    "connect, close": request(None),
                    "/healthz": request("/healthz"),
                    "404": request("/nowhere"),
                    "429": request(LISTING),
                }
            for kind, data in kinds.items():
                found[kind] = await flood(
                    process.port, process.pid, data, args.clients, args.seconds
                )
        finally:
            process.terminate()
    return found


def report(tree: str, found: dict[str, Any]) -> None:
    healthz = found["/healthz"]["cpu_us"]
    pipelined = found["answers to 3 pipelined"]
    print(f"{tree}: answers to 3 pipelined requests on one connection: {pipelined}")
    for kind, f in found.items():
        if not isinstance(f, dict):
            continue
        print(
            f"{tree:8s} {kind:15s} {f['per_s']:7.0f}/s  server CPU {f['cpu_s_per_s']:.2f} s/s  "
            f"{f['per_cpu_s']:6.0f} per CPU s  {f['cpu_us']:6.0f} us each "
            f"({f['cpu_us'] / healthz:.2f}x /healthz) {f['statuses']}"
        )


async def main(args: argparse.Namespace) -> None:
    trees = [("this", os.environ.get("PYTHONPATH", "-"))]
    if args.against is not None:
        trees.append(("against", args.against))
    results: dict[str, Any] = {"machine": common.machine(), "command": common.command_line()}
    with common.workdir("refusal-cost-") as work:
        for tree, pythonpath in trees:
            results[tree] = found = await measure(work, pythonpath, args)
            report(tree, found)
    if args.against is not None:
        for kind, this in results["this"].items():
            if isinstance(this, dict):
                ratio = this["cpu_us"] / results["against"][kind]["cpu_us"]
                print(f"RATIO {kind}: this/against CPU per answer {ratio:.3f}")
    common.write_json(args.json, results)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--against", help="PYTHONPATH of the tree to compare with ('-': the venv's)"
    )
    common.add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    common.run(main(parse()))
