"""The peers of ``bench.clock_jump``, and what each saw: a keyed publisher that resends
what is not acknowledged, a viewer that resumes with ``last_seq`` and ``epoch``, a
watcher that pings and then falls silent (for ``idle``), and a token holder whose
token runs out on the server's clock; plus the HTTP reads the checks use.

Every wait is bounded (``PATIENCE``); a peer whose connection ends notes the close
code and reason, waits a moment, and connects again."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PATIENCE = 10.0  # seconds any one reply may take before the peer gives the connection up
WINDOW = 4  # appends a publisher has unacknowledged at once
LOST = (OSError, ConnectionClosed, InvalidStatus, TimeoutError, asyncio.TimeoutError)
SECRET = "clock-jump-bench-secret-of-32-bytes-at-least"


def token(sub: str, exp_in: float, iat: bool = True) -> str:
    """An HS256 token for ``sub`` that expires ``exp_in`` seconds from the real clock
    (this process runs without faketime)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "exp": now + int(exp_in), "role": "admin"}
    if iat:
        claims["iat"] = now

    def part(value: dict[str, Any]) -> bytes:
        raw = json.dumps(value, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    head = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    signature = hmac.new(SECRET.encode(), head, hashlib.sha256).digest()
    return (head + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


ADMIN = token("bench", 7 * 86400, iat=False)  # valid whatever the jumps


@dataclass
class Tally:
    """What one peer saw: closes (``code reason``) and error codes, in order."""

    closes: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def closed(self, error: BaseException) -> None:
        if isinstance(error, ConnectionClosed):
            frame = error.rcvd
            self.closes.append(f"{frame.code} {frame.reason}" if frame else "no close frame")
        elif isinstance(error, InvalidStatus):
            self.closes.append(f"HTTP {error.response.status_code}")
        else:
            self.closes.append(type(error).__name__)

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


@dataclass
class Publisher:
    session_id: str
    acked: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (seq, epoch)
    unacked: dict[int, str] = field(default_factory=dict)  # request id -> key
    next_index: int = 0
    tally: Tally = field(default_factory=Tally)
    epochs: list[str] = field(default_factory=list)


@dataclass
class Viewer:
    session_id: str
    epoch: str | None = None
    last_seq: int = 0
    events: int = 0
    gaps: list[str] = field(default_factory=list)
    not_resumed: int = 0
    tally: Tally = field(default_factory=Tally)


async def hello(ws: Any, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", "token": ADMIN, **fields}))
    welcome: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


async def again(run: Any, tally: Tally, *args: Any) -> None:
    """``run(*args)`` again and again until cancelled, noting how each ended. A
    cancellation that met an expiring ``open_timeout`` comes out as a TimeoutError
    (asyncio.timeout): the task is still being cancelled, and ends."""
    task = asyncio.current_task()
    assert task is not None
    while not task.cancelling():
        try:
            await run(*args)
        except LOST as error:
            tally.closed(error)
        except RuntimeError as error:
            tally.closes.append(str(error)[:80])
        if not task.cancelling():
            await asyncio.sleep(0.2)


async def publish(pub: Publisher, port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{pub.session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
        epoch = (await hello(ws, create=True, role="agent"))["epoch"]
        if not pub.epochs or pub.epochs[-1] != epoch:
            pub.epochs.append(epoch)
        window = asyncio.Semaphore(WINDOW)

        def frame(index: int) -> str:
            event = {"type": "token", "content": pub.unacked[index]}
            return json.dumps(
                {"type": "event", "id": index, "key": pub.unacked[index], "event": event}
            )

        async def sender() -> None:
            for index in list(pub.unacked):
                await window.acquire()
                await ws.send(frame(index))
            while True:
                await window.acquire()
                index = pub.next_index
                pub.next_index += 1
                pub.unacked[index] = f"k{index}"
                await ws.send(frame(index))
                await asyncio.sleep(0.02)

        sending = asyncio.create_task(sender())
        try:
            while True:
                reply = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
                if reply["type"] == "ack":
                    key = pub.unacked.pop(reply["id"])
                    pub.acked[key] = (reply["seq"], epoch)
                    window.release()
                elif reply["type"] == "error":
                    pub.tally.error(reply.get("code", "?"))
                    window.release()  # stays unacked: resent on the next connection
        finally:
            sending.cancel()
            await asyncio.wait({sending})


async def view(viewer: Viewer, port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{viewer.session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
        resume: dict[str, Any] = {}
        if viewer.epoch is not None:
            resume = {"last_seq": viewer.last_seq, "epoch": viewer.epoch}
        welcome = await hello(ws, **resume)
        if resume and not welcome["resumed"]:
            viewer.not_resumed += 1
        if not resume or not welcome["resumed"]:
            viewer.last_seq = welcome["last_seq"]
        viewer.epoch = welcome["epoch"]
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 3 * PATIENCE))
            if frame["type"] != "event":
                continue
            if frame["seq"] != viewer.last_seq + 1:
                viewer.gaps.append(f"seq {frame['seq']} after {viewer.last_seq}")
            viewer.last_seq = frame["seq"]
            viewer.events += 1


async def watch(session_id: str, port: int, talking: asyncio.Event, tally: Tally) -> None:
    """Attached to ``session_id``; pings every half second while ``talking`` is set,
    then stays silent (the session should go ``idle`` one idle timeout later)."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
        await hello(ws, create=True)

        async def reader() -> None:
            async for _ in ws:
                pass

        reading = asyncio.create_task(reader())
        try:
            n = 0
            while not reading.done():
                if talking.is_set():
                    n += 1
                    await ws.send(json.dumps({"type": "ping", "id": n}))
                await asyncio.wait({reading}, timeout=0.5)
            reading.result()  # its close, as the tally's
        finally:
            reading.cancel()


async def hold_token(session_id: str, port: int, exp_in: float, tally: Tally) -> float:
    """Attached with a token that expires ``exp_in`` s from now (real clock) until the
    server closes the connection; the monotonic time of that close."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    try:
        async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token("bench", exp_in)}))
            async for _ in ws:
                pass
    except LOST as error:
        tally.closed(error)
    return time.monotonic()


async def try_token(session_id: str, port: int, exp_in: float) -> str:
    """A fresh connection with a token issued now (real clock, ``iat`` set): its first
    frame's type, or how it was closed."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    try:
        async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
            await ws.send(json.dumps({"type": "hello", "token": token("bench", exp_in)}))
            return str(json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))["type"])
    except ConnectionClosed as closed:
        return f"{closed.rcvd.code} {closed.rcvd.reason}" if closed.rcvd else "no close frame"
    except LOST as error:
        return type(error).__name__


async def born(session_id: str, port: int) -> str:
    """A session made now, and one event appended to it: its first reply's type (an
    error's code), or how it was closed; then, a second later, whether it is still
    there for a new attach."""
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}"
    answer = ""
    try:
        async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
            await hello(ws, create=True)
            event = {"type": "token", "content": "first"}
            await ws.send(json.dumps({"type": "event", "id": 1, "event": event}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE))
            answer = str(reply.get("code", reply["type"])) + ", then "
        await asyncio.sleep(1)
        async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
            await hello(ws)
            return f"{answer}attached again"
    except ConnectionClosed as closed:
        code = f"{closed.rcvd.code} {closed.rcvd.reason}" if closed.rcvd else "no close frame"
        return answer + code
    except LOST as error:
        return answer + type(error).__name__


def http_get(port: int, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=PATIENCE) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, None


async def get(port: int, path: str) -> tuple[int, Any]:
    return await asyncio.to_thread(http_get, port, path)


async def metadata(port: int, session_id: str) -> dict[str, Any] | None:
    status, body = await get(port, f"/api/v1/sessions/{session_id}?limit=1")
    return body["metadata"] if status == 200 else None


async def listing(port: int) -> list[dict[str, Any]]:
    """Every session, newest ``updated_at`` first, as the console lists them."""
    _, body = await get(port, "/api/v1/sessions?sort_by=updated_at&sort_order=desc&limit=100")
    return list(body["sessions"]) if body else []


async def log_times(port: int, session_id: str) -> list[datetime]:
    """The ``ts`` of every event in the session's log, in seq order."""
    status, body = await get(port, f"/api/v1/sessions/{session_id}/events?limit=1000")
    events = body["events"] if status == 200 else []
    return [datetime.fromisoformat(event["ts"]) for event in events]
