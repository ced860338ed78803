"""What do HTTP peers that reset as soon as they have asked for a page leave in the
server, against peers that read the same page in full?

A ``serve`` of the tree ``bamboo_session`` imports (PYTHONPATH: a tree's shim), JSONL
store, with one session holding one message of ``--message-bytes``. ``--requests``
peers ask for ``GET /api/v1/sessions/big?limit=1`` (or ``--path``) and read the answer
to its end, one after another: the baseline. Then as many ask for it and reset at once
(SO_LINGER 0), one after another. After each phase the server is left to settle (no CPU
for a second) and its resident memory read: the growth of each phase, over what the
pages it read weigh in all (1: every page kept). Its CPU per request too (the resets'
page is read all the same: the server cannot know the peer is gone until it has an
answer to write).

    python -m bench.http_resets --requests 100 --message-bytes 3145728
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from .common import (
    HOST,
    add_common_args,
    bamboo_server,
    cpu_seconds,
    ratio_line,
    rss_kib,
    run,
    workdir,
    write_json,
)

QUESTION = "http_resets"
MIB = 1024 * 1024


def read_in_full(port: int, path: str) -> int:
    with socket.create_connection((HOST, port)) as peer:
        peer.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        size = 0
        while chunk := peer.recv(1 << 20):
            size += len(chunk)
    return size


def ask_and_reset(port: int, path: str) -> None:
    peer = socket.create_connection((HOST, port))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    peer.close()


async def settled(pid: int) -> None:
    """Once the server has used no CPU for a second (a minute at most)."""
    deadline = time.monotonic() + 60
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        now = cpu_seconds(pid)
        if now - used < 0.005:
            return
        used = now


async def phase(pid: int, requests: int, each: Any) -> dict[str, float]:
    await settled(pid)
    rss, cpu = rss_kib(pid), cpu_seconds(pid)
    for _ in range(requests):
        await asyncio.to_thread(each)
    await settled(pid)
    return {
        "rss_growth_mib": (rss_kib(pid) - rss) / 1024,
        "cpu_ms_per_request": (cpu_seconds(pid) - cpu) * 1000 / requests,
    }


async def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    limit = str(args.message_bytes + MIB)
    server = bamboo_server(
        work / "data", work / "server.log", "--max-frame-bytes", limit, "--max-page-bytes", limit
    )
    server.start()
    try:
        pid, port = server.pid, server.port
        async with connect(server.url("/api/v1/stream/big"), max_size=None) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            await ws.recv()
            message = {"role": "user", "content": "m" * args.message_bytes}
            await ws.send(json.dumps({"type": "message", "id": 1, "message": message}))
            await ws.recv()
        assert read_in_full(port, args.path) > args.message_bytes  # the allocator warmed
        reads = await phase(pid, args.requests, lambda: read_in_full(port, args.path))
        resets = await phase(pid, args.requests, lambda: ask_and_reset(port, args.path))
    finally:
        server.terminate()
    return {"requests": args.requests, "path": args.path, "reads": reads, "resets": resets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--message-bytes", type=int, default=3 * MIB)
    parser.add_argument("--path", default="/api/v1/sessions/big?limit=1")
    add_common_args(parser)
    args = parser.parse_args()
    with workdir(QUESTION) as work:
        results = run(measure(args, work))
    reads, resets = results["reads"], results["resets"]
    for name, figures in (("reads", reads), ("resets", resets)):
        print(
            f"{name}: RSS +{figures['rss_growth_mib']:.1f} MiB, "
            f"{figures['cpu_ms_per_request']:.2f} ms CPU per request"
        )
    # The server's growth over what the pages asked for weigh in all: 1 when it keeps
    # every page it read for them; the reads' own is the baseline (nothing kept).
    pages_mib = args.requests * args.message_bytes / MIB
    for name, figures in (("reads", reads), ("resets", resets)):
        kept = figures["rss_growth_mib"] / pages_mib
        print(ratio_line(QUESTION, f"{name}_growth_over_pages", kept, "near 0, as the reads'"))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
