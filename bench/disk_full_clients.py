"""The disk-full soak's peers (bench/disk_full_soak.py): publishers of keyed events and
messages that send again whatever was not acknowledged, viewers that resume after the
last seq they saw, and creators of sessions that spend the file system's inodes. Each
records what the server answered (acks, error codes, close codes) and any reply that
did not come in time, so the soak can hold the store to what was acknowledged."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

WINDOW = 8  # requests in flight per publisher
REPLY_PATIENCE = 20.0  # seconds a request may wait for its reply before it counts as hung
LOST = (WebSocketException, OSError, TimeoutError)


@dataclasses.dataclass
class Outcomes:
    """What peers were told, across every client of the soak."""

    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    closes: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    error_messages: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    problems: list[str] = dataclasses.field(default_factory=list)

    def closed(self, exc: BaseException) -> None:
        received = exc.rcvd if isinstance(exc, ConnectionClosed) else None
        self.closes[received.code if received is not None else 1006] += 1


@dataclasses.dataclass
class Publisher:
    """A publisher's record: key -> seq for what was acknowledged, and the indices
    sent and not yet acknowledged (sent again at the next chance)."""

    session_id: str
    padding: int
    pause: float = 0.0  # seconds between batches: how fast it spends the disk
    next_index: int = 0
    acked: dict[str, int] = dataclasses.field(default_factory=dict)
    unacked: set[int] = dataclasses.field(default_factory=set)

    def key(self, index: int) -> str:
        return f"{self.session_id}-{index}"

    def frame(self, index: int) -> str:
        content = self.key(index) + "." * self.padding
        if index % 4 == 3:
            message = {"role": "user", "content": content}
            return json.dumps(
                {"type": "message", "id": index, "key": self.key(index), "message": message}
            )
        event = {"type": "token", "content": content}
        return json.dumps({"type": "event", "id": index, "key": self.key(index), "event": event})


@dataclasses.dataclass
class Viewer:
    session_id: str
    seen: dict[int, str] = dataclasses.field(default_factory=dict)  # seq -> key
    last_seq: int = 0
    epoch: str | None = None


def key_of(event: dict[str, Any]) -> str:
    """The key a publisher put at the start of an event's (or message's) content."""
    content = event.get("content") or event.get("message", {}).get("content", "")
    return str(content).split(".", 1)[0]


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), REPLY_PATIENCE))
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


def note_reply(pub: Publisher, reply: dict[str, Any], outcomes: Outcomes) -> bool:
    """Records an ack or an error; whether the reply answered a request."""
    if reply["type"] == "ack":
        index = int(reply["id"])
        key = pub.key(index)
        if key in pub.acked and pub.acked[key] != reply["seq"]:
            outcomes.problems.append(f"{key} acked as {pub.acked[key]}, then as {reply['seq']}")
        pub.acked[key] = reply["seq"]
        pub.unacked.discard(index)
        return True
    if reply["type"] == "error" and "id" in reply:
        outcomes.errors[reply["code"]] += 1
        outcomes.error_messages[reply["message"][:120]] += 1
        return True
    return False


async def publish_once(url: str, pub: Publisher, outcomes: Outcomes, stop: asyncio.Event) -> None:
    """One connection: keeps ``WINDOW`` requests in flight, the unacknowledged first,
    until ``stop``; a request whose reply takes longer than ``REPLY_PATIENCE`` is a
    problem (a hang)."""
    async with connect(url, open_timeout=5, close_timeout=1, max_size=None) as ws:
        await hello(ws, create=True, role="agent")
        while not stop.is_set():
            batch = sorted(pub.unacked)[:WINDOW]
            while len(batch) < WINDOW:
                batch.append(pub.next_index)
                pub.unacked.add(pub.next_index)
                pub.next_index += 1
            for index in batch:
                await ws.send(pub.frame(index))
            waiting = len(batch)
            while waiting:
                try:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), REPLY_PATIENCE))
                except TimeoutError:
                    outcomes.problems.append(f"{pub.session_id}: no reply in {REPLY_PATIENCE} s")
                    return
                waiting -= note_reply(pub, reply, outcomes)
            # Failing: no spin. Else the publisher's pace.
            await asyncio.sleep(max(pub.pause, 0.05 if len(pub.unacked) >= WINDOW else 0))


async def keep_publishing(
    port: int, pub: Publisher, outcomes: Outcomes, stop: asyncio.Event
) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{pub.session_id}"
    while not stop.is_set():
        try:
            await publish_once(url, pub, outcomes, stop)
        except ConnectionClosed as exc:
            outcomes.closed(exc)
        except (*LOST, RuntimeError):
            outcomes.closes[0] += 1  # refused or broken handshake: a server down
        await asyncio.sleep(0.1)


async def view_once(url: str, viewer: Viewer, outcomes: Outcomes, stop: asyncio.Event) -> None:
    async with connect(url, open_timeout=5, close_timeout=1, max_size=None) as ws:
        welcome = await hello(ws, create=True, last_seq=viewer.last_seq, epoch=viewer.epoch)
        if viewer.epoch is not None and not welcome["resumed"]:
            outcomes.problems.append(f"viewer of {viewer.session_id} not resumed: {welcome}")
        viewer.epoch = welcome["epoch"]
        while not stop.is_set():
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except TimeoutError:
                continue
            if frame["type"] != "event":
                continue
            if frame["seq"] != viewer.last_seq + 1:
                outcomes.problems.append(
                    f"viewer of {viewer.session_id}: seq {frame['seq']} after {viewer.last_seq}"
                )
            viewer.last_seq = frame["seq"]
            viewer.seen[frame["seq"]] = key_of(frame["event"])


async def keep_viewing(port: int, viewer: Viewer, outcomes: Outcomes, stop: asyncio.Event) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{viewer.session_id}"
    while not stop.is_set():
        try:
            await view_once(url, viewer, outcomes, stop)
        except ConnectionClosed as exc:
            outcomes.closed(exc)
        except (*LOST, RuntimeError):
            outcomes.closes[0] += 1
        await asyncio.sleep(0.1)


async def keep_creating(
    port: int, created: list[str], outcomes: Outcomes, stop: asyncio.Event, prefix: str
) -> None:
    """Creates sessions one after another (each spends the store's files), recording
    those welcomed; a refusal is counted by its close code."""
    number = 0
    while not stop.is_set():
        session_id = f"{prefix}-{number}"
        number += 1
        url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
        try:
            async with connect(url, open_timeout=5, close_timeout=1) as ws:
                await hello(ws, create=True, user_id="creator")
                created.append(session_id)
        except ConnectionClosed as exc:
            outcomes.closed(exc)
            await asyncio.sleep(0.05)
        except (*LOST, RuntimeError):
            outcomes.closes[0] += 1
            await asyncio.sleep(0.1)
