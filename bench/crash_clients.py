"""The crash soak's clients (bench/crash_soak.py): publishers that keep a window of
keyed events in flight and re-send what was not acknowledged after each crash, and
readers that follow a session live and resume after the last event they saw. Each
(re)connect asks its endpoint for a URL: one server, or (``--instances``) a random
instance among those up, so that a resend or a resume may land on another one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

WINDOW = 32  # events in flight per publisher
# How a killed server shows in a client: a dropped connection, a refused or broken
# handshake, a timeout.
LOST = (WebSocketException, OSError, TimeoutError)


class Endpoint(Protocol):
    """Where a client connects: asked again at each (re)connect."""

    def url(self, session_id: str) -> str: ...


@dataclasses.dataclass
class Publisher:
    """One publisher's record of what it sent and what was acknowledged."""

    name: str
    session_id: str
    next_index: int = 0
    unacked: dict[int, str] = dataclasses.field(default_factory=dict)  # index -> key
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> seq
    duplicates: int = 0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def key(self, index: int) -> str:
        return f"{self.name}-{index}"


@dataclasses.dataclass
class Reader:
    session_id: str
    seen: list[int] = dataclasses.field(default_factory=list)
    contents: list[str] = dataclasses.field(default_factory=list)
    epoch: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await ws.recv())
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


def event_frame(index: int, key: str) -> str:
    event = {"type": "token", "content": key}
    return json.dumps({"type": "event", "id": index, "key": key, "event": event})


def note_reply(pub: Publisher, reply: dict[str, Any]) -> int | None:
    """Records an ack or error; the request index it answered, if it answered one."""
    if reply["type"] == "ack":
        pub.acked[pub.unacked.pop(reply["id"])] = reply["seq"]
        pub.duplicates += bool(reply.get("duplicate"))
        return int(reply["id"])
    if reply["type"] == "error":
        pub.errors.append(reply)
        return int(reply["id"])
    return None


async def publish(
    server: Endpoint, pub: Publisher, *, attached: asyncio.Event | None = None
) -> None:
    """Re-sends what is unacknowledged, then new events, until the connection drops;
    ``attached`` is set once the server answered its hello."""
    async with connect(server.url(pub.session_id), open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="agent")
        if attached is not None:
            attached.set()
        window = asyncio.Semaphore(WINDOW)

        async def send(index: int) -> None:
            await window.acquire()
            await ws.send(event_frame(index, pub.unacked[index]))

        async def sender() -> None:
            for index in list(pub.unacked):
                await send(index)
            while True:
                index = pub.next_index
                pub.next_index += 1
                pub.unacked[index] = pub.key(index)
                await send(index)

        sending = asyncio.create_task(sender())
        try:
            while True:
                if note_reply(pub, json.loads(await ws.recv())) is not None:
                    window.release()
        finally:
            sending.cancel()
            # Waited for, not awaited: awaiting it under a suppress of CancelledError
            # also swallowed a cancel of this task that came meanwhile, and the task
            # (the soaks' keep_connecting) reconnected instead of ending.
            await asyncio.wait({sending})
            if not sending.cancelled():
                with contextlib.suppress(*LOST):
                    sending.result()


async def retry_pending(server: Endpoint, pub: Publisher) -> None:
    """Re-sends every unacknowledged event, a window at a time, until all are acked."""
    async with connect(server.url(pub.session_id), open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="agent")
        pending = list(pub.unacked)
        for start in range(0, len(pending), WINDOW):
            waiting = set(pending[start : start + WINDOW])
            for index in sorted(waiting):
                await ws.send(event_frame(index, pub.unacked[index]))
            while waiting:
                waiting.discard(note_reply(pub, json.loads(await ws.recv())))


async def follow(
    server: Endpoint,
    reader: Reader,
    until_seq: int | None = None,
    *,
    attached: asyncio.Event | None = None,
) -> None:
    """Reads events, resuming after the last one seen (from the start the first time),
    until the connection drops or ``until_seq`` is reached; ``attached`` is set once the
    server answered its hello."""

    def last() -> int:
        return reader.seen[-1] if reader.seen else 0

    async with connect(server.url(reader.session_id), open_timeout=5, close_timeout=1) as ws:
        welcome = await hello(ws, create=True, last_seq=last(), epoch=reader.epoch)
        if not welcome["resumed"]:
            reader.problems.append(f"not resumed after seq {last()}: {welcome}")
        reader.epoch = welcome["epoch"]
        if attached is not None:
            attached.set()
        while until_seq is None or last() < until_seq:
            frame = json.loads(await ws.recv())
            if frame["type"] != "event":
                continue
            if frame["seq"] != last() + 1:
                reader.problems.append(f"seq {frame['seq']} after {last()}")
            reader.seen.append(frame["seq"])
            reader.contents.append(frame["event"]["content"])
