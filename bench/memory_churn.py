"""One round of bench/memory_plateau.py's churn, with raw ``websockets`` clients and raw
HTTP/1.1 GETs, and the probe that asks the server what it holds (SIGUSR1, answered by
bench/memory_probe/sitecustomize.py with a JSON file)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from traceback import extract_tb
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from . import common

READ_TIMEOUT = 20.0  # a reply or event later than this is a fault of the round
IN_FLIGHT = 16  # sessions churned at once
DUPLICATES = 8  # appends each publisher sends again with their keys


@dataclass
class MemoryDump:
    tasks: int
    gc_objects: int
    tasks_by_coroutine: dict[str, int]
    objects_by_type: dict[str, int]
    top: dict[str, int] = field(default_factory=dict)  # traced bytes by file:line


class Probe:
    """Asks the server (its pid) for a dump and waits for the file."""

    def __init__(self, pid: int, directory: Path) -> None:
        self.pid = pid
        self.directory = directory
        self.count = 0
        self.last: MemoryDump

    async def dump(self) -> MemoryDump:
        os.kill(self.pid, signal.SIGUSR1)
        path = self.directory / f"dump-{self.count}.json"
        for _ in range(600):
            if path.exists():
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the server wrote no {path} within 60 s")
        self.count += 1
        raw = json.loads(path.read_text())
        self.last = MemoryDump(
            tasks=raw["tasks"],
            gc_objects=raw["gc_objects"],
            tasks_by_coroutine=dict(raw["tasks_by_coroutine"]),
            objects_by_type=dict(raw["objects_by_type"]),
            top={line: size for line, size, _count in raw.get("top", [])},
        )
        return self.last


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(common.HOST, port)
    try:
        head = f"GET {path} HTTP/1.1\r\nHost: {common.HOST}:{port}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        raw = await asyncio.wait_for(reader.read(), READ_TIMEOUT)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body


class Peer:
    """A WebSocket connection to one session, with the last event seq it was sent."""

    def __init__(self, connection: ClientConnection, welcome: dict[str, Any]) -> None:
        self.connection = connection
        self.welcome = welcome
        self.seq = 0
        self.gaps = 0

    @classmethod
    async def attach(cls, port: int, sid: str, hello: dict[str, Any]) -> Peer:
        connection = await connect(f"ws://{common.HOST}:{port}/api/v1/stream/{sid}")
        await connection.send(json.dumps({"type": "hello", **hello}))
        welcome = json.loads(await asyncio.wait_for(connection.recv(), READ_TIMEOUT))
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"{sid}: {welcome}")
        peer = cls(connection, welcome)
        if "last_seq" in hello:
            peer.seq = int(hello["last_seq"])  # a resume: its replay follows
        else:
            peer.seq = int(welcome["last_seq"])  # live only
        return peer

    async def frame(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(
            await asyncio.wait_for(self.connection.recv(), READ_TIMEOUT)
        )
        if frame.get("type") == "event":
            if frame["seq"] != self.seq + 1:
                self.gaps += 1
            self.seq = max(self.seq, frame["seq"])
        return frame

    async def until_seq(self, seq: int) -> None:
        while self.seq < seq:
            await self.frame()

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        await self.connection.send(json.dumps(request))
        while True:
            frame = await self.frame()
            if frame.get("id") == request["id"] and frame["type"] != "event":
                return frame

    def drop(self) -> None:
        """Gone without a close frame, as a laptop lid shut."""
        self.connection.transport.abort()


def append(sid: str, life: int, number: int) -> dict[str, Any]:
    """The ``number``th append of a session's visit that began at seq ``life``: tokens
    mostly, tools, a message every 10 (keys differ between visits: a later visit's
    appends are new, not duplicates)."""
    key = f"{sid}@{life}-{number}"
    kind = number % 10
    if kind == 9:
        text = "reply " * (30 + (number * 53) % 300)
        return {"type": "message", "id": number, "key": key,
                "message": {"role": "assistant", "content": text}}  # fmt: skip
    if kind == 3:
        event = {"type": "tool_start", "tool_call_id": f"c{number}", "tool_name": "search",
                 "arguments": {"q": "x" * (number % 90)}}  # fmt: skip
    elif kind == 4:
        event = {"type": "tool_complete", "tool_call_id": f"c{number - 1}",
                 "result": {"success": True, "content": "y" * (200 + number % 700)}}  # fmt: skip
    else:
        event = {"type": "token", "content": "tok " * (5 + (number * 37) % 100)}
    return {"type": "event", "id": number, "key": key, "event": event}


async def publish(peer: Peer, sid: str, life: int, first: int, end: int) -> int:
    """Appends ``first..end-1`` pipelined; their acks; the duplicates among them."""
    for number in range(first, end):
        await peer.connection.send(json.dumps(append(sid, life, number)))
    waiting, duplicates = set(range(first, end)), 0
    while waiting:
        frame = await peer.frame()
        if frame.get("type") == "ack" and frame.get("id") in waiting:
            waiting.discard(frame["id"])
            duplicates += bool(frame.get("duplicate"))
        elif frame.get("type") == "error":
            raise RuntimeError(f"{sid}: {frame}")
    return duplicates


async def session_life(
    port: int, sid: str, user: str, events: int, fate: str, tally: dict[str, int]
) -> None:
    publisher = await Peer.attach(port, sid, {"user_id": user, "title": f"chat {sid}",
                                              "create": True, "role": "agent"})  # fmt: skip
    epoch, start = publisher.welcome["epoch"], publisher.seq
    half = events // 2
    await publish(publisher, sid, start, 0, half)
    dropped = await Peer.attach(port, sid, {"user_id": user, "last_seq": start, "epoch": epoch})
    await dropped.until_seq(start + half)
    dropped.drop()
    live = await Peer.attach(port, sid, {"user_id": user})
    await publish(publisher, sid, start, half, events)
    duplicates = await publish(publisher, sid, start, events - DUPLICATES, events)
    tally["duplicates"] += duplicates  # after the await: concurrent sessions share tally
    last = start + events
    await live.until_seq(last)
    resumed = await Peer.attach(port, sid, {"user_id": user, "last_seq": start + half,
                                            "epoch": epoch})  # fmt: skip
    await resumed.until_seq(last)
    await resumed.request({"type": "history", "id": "h", "limit": 20})
    await resumed.request({"type": "events", "id": "e", "after_seq": start, "limit": 50})
    tally["gaps"] += live.gaps + resumed.gaps + dropped.gaps
    await resumed.connection.close()
    await live.connection.close()
    for path in (f"/api/v1/sessions/{sid}", f"/api/v1/sessions/{sid}/events?limit=50"):
        status, _ = await http_get(port, path)
        tally[f"http_{status}"] = tally.get(f"http_{status}", 0) + 1
    if fate == "close":
        await publisher.request({"type": "state", "id": "close", "state": "closed"})
        await publisher.connection.wait_closed()
    elif fate == "park":
        await publisher.connection.close()
    else:
        publisher.drop()


async def delete_with_tool(store_url: str, ids: list[str]) -> int:
    """``bamboo-session delete`` on a shared store (a child stopped by its pid)."""
    tool = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bamboo_session.server", "delete", "--store", store_url, *ids,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        cwd=common.ROOT,
    )  # fmt: skip
    try:
        return await asyncio.wait_for(tool.wait(), 60)
    finally:
        if tool.returncode is None:
            tool.kill()
            await tool.wait()


async def run_round(
    port: int, number: int, parked: list[str], args: argparse.Namespace, url: str, store: str
) -> tuple[list[str], dict[str, int]]:
    """One round: last round's parked sessions again, new ones, listings, deletes."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    tally = {"duplicates": 0, "gaps": 0, "failed": 0}
    fates = ("close", "park", "close", "drop")
    plan = [(sid, "close") for sid in parked] + [
        (f"r{number}-s{i}", fates[i % len(fates)]) for i in range(args.sessions)
    ]

    async def one(sid: str, fate: str) -> None:
        async with gate:
            try:
                user = f"u{int(sid.rpartition('s')[2]) % args.users}"
                await session_life(port, sid, user, args.events, fate, tally)
            except Exception as error:  # counted and shown: a round goes on
                tally["failed"] += 1
                where = [
                    f"{frame.name}:{frame.lineno}" for frame in extract_tb(error.__traceback__)
                ]
                print(f"  {sid}: {type(error).__name__}: {error} at {where[1:3]}", file=sys.stderr)

    await asyncio.gather(*(one(sid, fate) for sid, fate in plan))
    for user in range(args.users):
        await http_get(port, f"/api/v1/sessions?user_id=u{user}&limit=50")
    await http_get(port, "/api/v1/sessions?state=closed&sort_by=message_count")
    if store == "redis":
        closed = [sid for sid, fate in plan if fate == "close"][::4]
        tally["delete_status"] = await delete_with_tool(url, closed)
    return [sid for sid, fate in plan if fate == "park"], tally
