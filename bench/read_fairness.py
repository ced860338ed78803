"""Question: can one peer, or a crowd of readers, starve the other peers' HTTP reads?

Three attacks on a server subprocess (JSONL store, auth on: the attackers are the user
``mallory``, the other peer ``alice``):

- crowd: ``--crowd`` connections of mallory ask for a long whole history and read it a
  byte a second (a tiny receive buffer), holding a page of the server each for
  ``--answer-page-timeout``. Then alice asks for her whole history, a page of it and a
  page of its events: how many of the three are served (200), and how long each takes.
  The server's account of unread answers is a quarter of ``--memory-budget``; one
  peer's part of it, ``--answer-peer-share``, is what keeps the crowd from taking it all.
- streams: ``--streams`` readers, each a user of its own, read mallory's whole history
  as fast as they can, over and over, while alice asks for a small page every 50 ms
  for ``--seconds``: its latency (whole histories may hold at most half of the
  page-read slots).
- holders: ``--holders`` peers (users of their own) each keep pages of about 1 MiB
  unread, as many as its part of the unread answers takes, and ask again every 9.5 s
  (an unread answer is dropped after 10 s), while alice asks for a page of about
  1 MiB, then a small one, again and again for ``--holders-seconds``: how many of each
  are served. Peers at their part filled the account between them, and alice got 503.

Run: ``python -m bench.read_fairness`` (``--crowd``, ``--streams``, ``--holders``,
``--messages``, ``--seconds``, ``--holders-seconds``). Prints the figures and three
RATIO lines; ``--json`` writes them too. ``BENCH_BEFORE=<checkout>`` runs the same
attacks on an older tree's server first (bench/compare.py), its figures under
``before``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.messages import Message
from bamboo_session.protocol.models import Session

from . import compare
from .common import (
    ServerProcess,
    add_common_args,
    bamboo_server,
    percentile,
    ratio_line,
    run,
    workdir,
    write_json,
)

SECRET = "bench-read-fairness-secret-0123456789"  # 32+ bytes, as --auth-secret wants
ALICE_PATHS = (
    "/api/v1/sessions/mine",
    "/api/v1/sessions/mine?limit=1000",
    "/api/v1/sessions/mine/events",
)
SMALL_PAGE = "/api/v1/sessions/small?limit=10"
BIG_PAGE = "/api/v1/sessions/mine?limit=1000"  # about 1 MiB (--max-page-bytes)
HELD_PAGE = "/api/v1/sessions/long?limit=1000"  # about 1 MiB, of 2 KiB messages
HOLD_SECONDS = 9.5  # a holder asks again so often: an unread answer goes after 10 s
HELD_AT_MOST = 20  # pages a holder keeps at once (its part of 16 MiB takes 15 or 16)


def token(sub: str) -> str:
    """A token of ``sub``; the streamed readers (``reader…``) and the holders
    (``holder…``) are admins, who may read mallory's history, each a peer of its own."""
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + 3600}
    if sub.startswith(("reader", "holder")):
        claims["role"] = "admin"
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def seed(data_dir: Path, messages: int) -> None:
    """Mallory's long history (2 KiB messages), alice's (1 KiB), and a short one."""
    storage = await open_storage(f"jsonl://{data_dir}")
    try:
        for session_id, user, count, size in (
            ("long", "mallory", messages, 2048),
            ("mine", "alice", messages // 2, 1024),
            ("small", "alice", 50, 100),
        ):
            session = Session.new(session_id, user_id=user)
            session.messages = [
                Message.user(f"{session_id}-{i}" + "x" * size) for i in range(count)
            ]
            await storage.create_session(session)
    finally:
        await storage.close()


async def ask(port: int, path: str, user: str, receive_buffer: int = 0) -> socket.socket:
    """A connection that has sent its GET of ``path`` as ``user``."""
    loop = asyncio.get_running_loop()
    peer = socket.socket()
    if receive_buffer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    peer.setblocking(False)
    await loop.sock_connect(peer, ("127.0.0.1", port))
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(user)}\r\n\r\n"
    await loop.sock_sendall(peer, head.encode())
    return peer


async def answer(
    port: int, path: str, user: str, received: list[int] | None = None
) -> tuple[int, float]:
    """A well-behaved GET, read as fast as it comes: its status and seconds; the bytes
    of each read are added to ``received[0]`` as they come."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    head = b""
    with await ask(port, path, user) as peer:
        while chunk := await loop.sock_recv(peer, 1 << 20):
            head = head or chunk[:12]
            if received is not None:
                received[0] += len(chunk)
    return int(head[9:12] or 0), time.monotonic() - started


async def trickle(port: int, heard: Callable[[int], None], stop: asyncio.Event) -> None:
    """Mallory's whole history, read a byte a second once its status line is in (told
    to ``heard``)."""
    loop = asyncio.get_running_loop()
    with await ask(port, "/api/v1/sessions/long", "mallory", receive_buffer=4096) as peer:
        head = b""
        while len(head) < 12 and (byte := await loop.sock_recv(peer, 1)):
            head += byte
        heard(int(head[9:12] or 0))
        while not stop.is_set() and await loop.sock_recv(peer, 1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def crowd_attack(port: int, crowd: int) -> dict[str, Any]:
    stop, all_heard = asyncio.Event(), asyncio.Event()
    statuses: list[int] = []

    def heard(status: int) -> None:
        statuses.append(status)
        if len(statuses) == crowd:
            all_heard.set()

    readers = [asyncio.create_task(trickle(port, heard, stop)) for _ in range(crowd)]
    try:
        await asyncio.wait_for(all_heard.wait(), 60)
        await asyncio.sleep(1)  # what the kernel takes of their answers, it takes by then
        alice = [await answer(port, path, "alice") for path in ALICE_PATHS]
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*readers, return_exceptions=True), 60)
    return {
        "crowd": crowd,
        "crowd_statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "alice": [
            {"path": path, "status": status, "seconds": round(seconds, 4)}
            for path, (status, seconds) in zip(ALICE_PATHS, alice, strict=True)
        ],
    }


async def streams_attack(port: int, streams: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    histories: dict[str, int] = {}
    received = [0]  # bytes the streamed readers have read, over the measured seconds

    async def read_again_and_again(user: str) -> None:
        while not stop.is_set():
            status, _ = await answer(port, "/api/v1/sessions/long", user, received)
            histories[str(status)] = histories.get(str(status), 0) + 1
            if status != 200:
                await asyncio.sleep(1)  # as Retry-After says

    readers = [asyncio.create_task(read_again_and_again(f"reader{n}")) for n in range(streams)]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    try:
        await asyncio.sleep(min(2.0, seconds))  # every reader under way
        started, received[0] = time.monotonic(), 0
        end = started + seconds
        while time.monotonic() < end:
            status, took = await answer(port, SMALL_PAGE, "alice")
            latencies.append(took)
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            await asyncio.sleep(0.05)
        streamed = received[0] / (time.monotonic() - started)
    finally:
        stop.set()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    latencies.sort()
    return {
        "streams": streams,
        "small_pages": len(latencies),
        "small_page_statuses": statuses,
        "small_page_p50_s": round(percentile(latencies, 0.5), 4),
        "small_page_p90_s": round(percentile(latencies, 0.9), 4),
        "small_page_max_s": round(latencies[-1], 4) if latencies else None,
        "whole_histories": histories,
        "streamed_mb_per_s": round(streamed / 1e6, 1),
    }


async def hold_pages(port: int, user: str, stop: asyncio.Event, statuses: list[int]) -> None:
    """A holder: pages of about 1 MiB asked for and left unread, one after the other
    until it is told no (its part full) or holds HELD_AT_MOST, kept HOLD_SECONDS, then
    let go and asked for again; each status read (its status line only) goes to
    ``statuses``."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = time.monotonic()
        held: list[socket.socket] = []
        try:
            while len(held) < HELD_AT_MOST and not stop.is_set():
                peer = await ask(port, HELD_PAGE, user, receive_buffer=4096)
                held.append(peer)
                head = b""
                while len(head) < 12 and (byte := await loop.sock_recv(peer, 12 - len(head))):
                    head += byte
                statuses.append(int(head[9:12] or 0))
                if statuses[-1] != 200:
                    break
            left = HOLD_SECONDS - (time.monotonic() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, left))
        finally:
            for peer in held:
                peer.close()


async def holders_attack(port: int, holders: int, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    held: list[int] = []
    attackers = [
        asyncio.create_task(hold_pages(port, f"holder{n}", stop, held)) for n in range(holders)
    ]
    big: dict[str, int] = {}
    small: dict[str, int] = {}
    try:
        await asyncio.sleep(min(2.0, seconds))  # every holder's part full by then
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for path, statuses in ((BIG_PAGE, big), (SMALL_PAGE, small)):
                status, _ = await answer(port, path, "alice")
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*attackers, return_exceptions=True)
    return {
        "holders": holders,
        "held_statuses": {str(s): held.count(s) for s in sorted(set(held))},
        "big_pages": big,
        "small_pages": small,
        "answers_dropped": await metric(port, "bamboo_answers_dropped_total"),
    }


async def metric(port: int, name: str) -> float | None:
    """A figure of the server's /metrics; None where it has no such metric."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    found = [line.split()[1] for line in text.splitlines() if line.startswith(name + " ")]
    return float(found[0]) if found else None


def server_of(kind: str, data_dir: Path, tmp: Path) -> ServerProcess:
    """This tree's server, or the older one of BENCH_BEFORE, on the same data."""
    flags = ("--auth-secret", SECRET)
    if kind == compare.BEFORE:
        tree = Path(os.environ[compare.BEFORE_TREE_ENV])
        return compare.before_server(kind, tree, tmp, "--data-dir", str(data_dir), *flags)
    return bamboo_server(data_dir, tmp / "server.log", *flags)


async def attacks(server: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    server.start()
    try:
        crowd = await crowd_attack(server.port, args.crowd)
        streams = await streams_attack(server.port, args.streams, args.seconds)
        holders = await holders_attack(server.port, args.holders, args.holders_seconds)
    finally:
        server.terminate()
    return {"crowd": crowd, "streams": streams, "holders": holders}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with workdir("read-fairness") as tmp:
        data_dir = tmp / "data"
        await seed(data_dir, args.messages)
        if os.environ.get(compare.BEFORE_TREE_ENV):
            results["before"] = await attacks(server_of(compare.BEFORE, data_dir, tmp), args)
        results.update(await attacks(server_of("bamboo", data_dir, tmp), args))
    return results


def report(results: dict[str, Any]) -> None:
    if "before" in results:
        print("before (BENCH_BEFORE):")
        describe(results["before"])
        print("this tree:")
    describe(results)
    crowd, streams, holders = results["crowd"], results["streams"], results["holders"]
    served = sum(asked["status"] == 200 for asked in crowd["alice"]) / len(crowd["alice"])
    print(ratio_line("read", "crowd_other_peer_served", served, "1.0"))
    print(ratio_line("read", "streams_small_page_p90_s", streams["small_page_p90_s"], "< 0.1"))
    pages = holders["big_pages"]
    served = pages.get("200", 0) / max(1, sum(pages.values()))
    print(ratio_line("read", "holders_other_peer_big_pages_served", served, "1.0"))


def describe(results: dict[str, Any]) -> None:
    crowd, streams, holders = results["crowd"], results["streams"], results["holders"]
    print(
        f"crowd of {crowd['crowd']} byte-a-second readers: their statuses {crowd['crowd_statuses']}"
    )
    for asked in crowd["alice"]:
        print(f"  other peer {asked['path']}: {asked['status']} in {asked['seconds']:.3f} s")
    print(
        f"{streams['streams']} streamed readers ({streams['streamed_mb_per_s']} MB/s, whole "
        f"histories {streams['whole_histories']}):"
        f" small page x{streams['small_pages']} {streams['small_page_statuses']}"
        f" p50 {streams['small_page_p50_s']:.3f} s, p90 {streams['small_page_p90_s']:.3f} s,"
        f" max {streams['small_page_max_s']:.3f} s"
    )
    print(
        f"{holders['holders']} peers holding pages unread (their statuses "
        f"{holders['held_statuses']}, answers dropped for room {holders['answers_dropped']}):"
        f" other peer's 1 MiB pages {holders['big_pages']}, small pages {holders['small_pages']}"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crowd", type=int, default=150, help="byte-a-second readers")
    parser.add_argument("--streams", type=int, default=150, help="fast whole-history readers")
    parser.add_argument("--messages", type=int, default=4000, help="of the long history")
    parser.add_argument("--seconds", type=float, default=10.0, help="of small pages asked for")
    parser.add_argument("--holders", type=int, default=5, help="peers keeping pages unread")
    parser.add_argument(
        "--holders-seconds", type=float, default=30.0, help="of the other peer's pages asked for"
    )
    add_common_args(parser)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    outcome = run(main(arguments))
    report(outcome)
    write_json(arguments.json, outcome)
