"""The rolling-upgrade bench's peers (bench/rolling_upgrade.py), written on raw
WebSocket frames of protocol version 1 (no client library of either tree, so that the
store and cluster scenarios test the servers alone): a publisher that streams keyed
events and messages and resends what was not acknowledged after each drop, a viewer
that follows a session and resumes with ``last_seq`` + ``epoch`` wherever the rotation
sends it, and the HTTP reads the checks compare. Each (re)connect asks its endpoint for
a URL, so a resume may land on another server, of another version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

LOST = (WebSocketException, OSError, TimeoutError)
WINDOW = 16
Endpoint = Callable[[str], str]  # session id -> the stream URL to connect to now


async def attach(url: str, **hello: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await asyncio.wait_for(connect(url, close_timeout=1, open_timeout=5), 10)
    try:
        await ws.send(json.dumps({"type": "hello", **hello}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
    except BaseException:
        await ws.close()
        raise
    if welcome.get("type") != "welcome":
        await ws.close()
        raise RefusedError(welcome)
    return ws, welcome


class RefusedError(Exception):
    """The server answered ``hello`` with something else than ``welcome``."""


@dataclasses.dataclass
class Publisher:
    """One publisher's record: what it sent (every item keyed), what was acknowledged.
    Every ``message_every``-th item is a ``message`` frame, the rest ``event`` frames."""

    name: str
    session_id: str
    title: str = ""
    user_id: str = "u-rolling"
    message_every: int = 5
    sent: int = 0
    acked: dict[str, int] = dataclasses.field(default_factory=dict)  # key -> seq
    messages: list[str] = dataclasses.field(default_factory=list)  # message keys, acked order
    unacked: dict[int, str] = dataclasses.field(default_factory=dict)  # request id -> key
    duplicates: int = 0
    errors: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    connects: list[str] = dataclasses.field(default_factory=list)  # URLs, in order
    welcomes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def frame(self, index: int, key: str) -> str:
        if index % self.message_every == self.message_every - 1:
            body = {"role": "assistant", "content": key}
            return json.dumps({"type": "message", "id": index, "key": key, "message": body})
        event = {"type": "token", "content": key}
        return json.dumps({"type": "event", "id": index, "key": key, "event": event})

    async def publish(
        self, endpoint: Endpoint, count: int, deadline: float, pace: float = 0.0
    ) -> None:
        """Publishes ``count`` more items, ``WINDOW`` in flight, until each is acked;
        after a drop reconnects (as long as ``deadline``, a ``time.monotonic()``) and
        resends every unacked item, in order, with its key."""
        target = self.sent + count
        while self.sent < target or self.unacked:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {len(self.unacked)} unacked at the deadline")
            url = endpoint(self.session_id)
            try:
                ws, welcome = await attach(
                    url, create=True, user_id=self.user_id, title=self.title, role="agent"
                )
            except (*LOST, RefusedError):
                await asyncio.sleep(0.05)
                continue
            self.connects.append(url)
            self.welcomes.append(welcome)
            try:
                await self._stream(ws, target, pace)
            except LOST:
                await asyncio.sleep(0.02)
            finally:
                await ws.close()

    async def _stream(self, ws: ClientConnection, target: int, pace: float) -> None:
        for index in sorted(self.unacked):  # resent first, in their order
            await ws.send(self.frame(index, self.unacked[index]))
        while self.sent < target or self.unacked:
            while self.sent < target and len(self.unacked) < WINDOW:
                index, key = self.sent, f"{self.name}-{self.sent}"
                self.unacked[index] = key
                self.sent += 1
                await ws.send(self.frame(index, key))
                if pace:
                    await asyncio.sleep(pace)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if reply.get("type") == "ack" and reply.get("id") in self.unacked:
                key = self.unacked.pop(reply["id"])
                self.acked[key] = reply["seq"]
                self.duplicates += bool(reply.get("duplicate"))
                if reply["id"] % self.message_every == self.message_every - 1:
                    self.messages.append(key)
            elif reply.get("type") == "error":
                self.errors.append(reply)
                self.unacked.pop(reply.get("id"), None)


@dataclasses.dataclass
class Viewer:
    """Follows a session from ``last_seq`` 0, checks every event is the next seq, and
    resumes after each drop (or every ``rotate_every`` events, on purpose) from the
    last one it saw with its epoch."""

    name: str
    session_id: str
    last_seq: int = 0
    epoch: str | None = None
    contents: dict[int, str] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    resumes: int = 0
    refused_resumes: int = 0
    presence: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    connects: list[str] = dataclasses.field(default_factory=list)

    async def follow(
        self, endpoint: Endpoint, done: Callable[[], bool], deadline: float, rotate_every: int = 0
    ) -> None:
        while not done():
            if time.monotonic() > deadline:
                self.problems.append(f"at the deadline, last seq {self.last_seq}")
                return
            url = endpoint(self.session_id)
            hello: dict[str, Any] = {"last_seq": self.last_seq}
            if self.epoch is not None:
                hello["epoch"] = self.epoch
            try:
                ws, welcome = await attach(url, **hello)
            except (*LOST, RefusedError):
                await asyncio.sleep(0.05)
                continue
            self.connects.append(url)
            try:
                self._welcomed(welcome, url)
                await self._read(ws, done, rotate_every)
            except LOST:
                await asyncio.sleep(0.02)
            finally:
                await ws.close()

    def _welcomed(self, welcome: dict[str, Any], url: str) -> None:
        if self.epoch is not None and welcome["epoch"] != self.epoch:
            self.problems.append(f"epoch changed at {url}: {self.epoch} -> {welcome['epoch']}")
        elif self.epoch is not None and not welcome["resumed"]:
            self.refused_resumes += 1
            self.problems.append(f"resume after {self.last_seq} refused at {url}")
        elif welcome["resumed"]:
            self.resumes += bool(self.epoch)
            expected = welcome["last_seq"] - self.last_seq
            if welcome["replay"] != expected:
                self.problems.append(f"replay {welcome['replay']}, expected {expected} at {url}")
        self.epoch = welcome["epoch"]

    async def _read(self, ws: ClientConnection, done: Callable[[], bool], rotate: int) -> None:
        got = 0
        while not done():
            try:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
            except TimeoutError:
                continue
            kind = frame.get("type")
            if kind == "presence":
                self.presence.append(frame)
            elif kind == "event":
                seq = frame["seq"]
                if seq != self.last_seq + 1:
                    self.problems.append(f"seq {seq} after {self.last_seq}")
                self.last_seq = max(self.last_seq, seq)
                self.contents[seq] = content_of(frame["event"])
                got += 1
                if rotate and got >= rotate:
                    return
            elif kind == "closed":
                return


def content_of(event: dict[str, Any]) -> str:
    if event.get("type") == "message":
        return str(event["message"]["content"])
    return str(event.get("content", event.get("type")))


async def get_json(url: str) -> Any:
    """A GET's JSON body (10 s at most); ``{"status": code, "body": text}`` for an HTTP
    error."""

    def fetch() -> Any:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return {"status": exc.code, "body": exc.read().decode(errors="replace")[:300]}

    return await asyncio.to_thread(fetch)


async def read_log(base: str, session_id: str, page: int = 1000) -> tuple[list[Any], int]:
    """Every event of the session over HTTP, paged, and the last seq the server gave."""
    events: list[Any] = []
    while True:
        after = events[-1]["seq"] if events else 0
        url = f"{base}/api/v1/sessions/{session_id}/events?after_seq={after}&limit={page}"
        answer = await get_json(url)
        if "events" not in answer:
            raise RuntimeError(f"{url}: {answer}")
        events += answer["events"]
        if len(answer["events"]) < page:
            return events, int(answer["last_seq"])
