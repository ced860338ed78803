"""The peers of ``bench.redis_bad_day``: keyed publishers that resend what is not
acknowledged, viewers that resume with ``last_seq`` and ``epoch``, a creator of
sessions; and what each saw, for the checks at the end.

Every wait is bounded (``PATIENCE``); a peer that loses its connection reconnects to
an instance drawn at random, after a short pause."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

PATIENCE = 10.0  # seconds any one reply may take before the peer gives the connection up
WINDOW = 8  # appends a publisher has unacknowledged at once
LOST = (OSError, ConnectionClosed, InvalidStatus, TimeoutError, asyncio.TimeoutError)


@dataclass
class Tally:
    """What one peer saw: close codes, error codes, the longest wait for a reply."""

    closes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)  # error frames' words, by count
    hangs: int = 0  # replies not come within PATIENCE

    def closed(self, error: BaseException) -> None:
        if isinstance(error, ConnectionClosed):
            frame = error.rcvd
            name = f"{frame.code} {frame.reason}" if frame else "no close frame"
        elif isinstance(error, TimeoutError | asyncio.TimeoutError):
            self.hangs += 1
            name = "timeout"
        else:
            name = type(error).__name__
        self.closes[name] = self.closes.get(name, 0) + 1


@dataclass
class Publisher:
    session_id: str
    acked: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (seq, epoch)
    unacked: dict[int, str] = field(default_factory=dict)  # request id -> key
    next_index: int = 0
    last_ack_at: float = 0.0
    tally: Tally = field(default_factory=Tally)
    # Events of its own publishes that came back to the connection that published them
    # (the wire contract: never); one a later connection gets is a peer's event to it.
    own_events: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "errors": self.tally.errors,
            "closes": self.tally.closes,
            "own_events": self.own_events,
        }

    def frame(self, index: int) -> str:
        key = self.unacked[index]
        if index % 5 == 4:  # every fifth a message: the history index is written too
            event: dict[str, Any] = {"type": "message", "message": {"role": "user", "content": key}}
            return json.dumps(
                {"type": "message", "id": index, "key": key, "message": event["message"]}
            )
        event = {"type": "token", "content": key}
        return json.dumps({"type": "event", "id": index, "key": key, "event": event})


@dataclass
class Viewer:
    session_id: str
    instance: int  # the instance it prefers (it goes elsewhere while that one is down)
    epoch: str | None = None
    last_seq: int = 0
    seen: list[tuple[str, int]] = field(default_factory=list)  # (epoch, seq), in order
    problems: list[str] = field(default_factory=list)
    not_resumed: int = 0
    last_event_at: float = 0.0
    tally: Tally = field(default_factory=Tally)


async def recv_within(ws: Any, seconds: float) -> Any:
    """``ws.recv()`` within ``seconds`` (TimeoutError past them). Not ``wait_for``: on
    Python 3.11 it returns a frame that came as the task was cancelled and drops the
    cancel, and the peer went on after its stop (acks counted after Redis's restart)."""
    async with asyncio.timeout(seconds):
        return await ws.recv()


async def hello(ws: Any, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await recv_within(ws, PATIENCE))
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


async def keep(run: Any, tally: Tally, ports: Any) -> None:
    """Runs ``run(port)`` again and again on an instance up, until cancelled."""
    while True:
        live = [p for p in ports() if p]
        if live:
            try:
                await run(random.choice(live))
            except LOST as error:
                tally.closed(error)
            except RuntimeError as error:
                tally.closes[str(error)[:60]] = tally.closes.get(str(error)[:60], 0) + 1
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The cancel met a connection's close, whose error replaced it: the
                # peer went on after its stop (acks counted after Redis's restart).
                raise asyncio.CancelledError
        await asyncio.sleep(random.uniform(0.05, 0.3))


async def publish(pub: Publisher, port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{pub.session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
        welcome = await hello(ws, create=True, role="agent")
        epoch = welcome["epoch"]
        window = asyncio.Semaphore(WINDOW)
        sent_here: set[str] = set()  # the keys this connection published

        async def sender() -> None:
            for index in list(pub.unacked):
                await window.acquire()
                sent_here.add(pub.unacked[index])
                await ws.send(pub.frame(index))
            while True:
                await window.acquire()
                index = pub.next_index
                pub.next_index += 1
                pub.unacked[index] = f"{pub.session_id}.k{index}"
                sent_here.add(pub.unacked[index])
                await ws.send(pub.frame(index))
                await asyncio.sleep(0.01)

        sending = asyncio.create_task(sender())
        try:
            while True:
                reply = json.loads(await recv_within(ws, PATIENCE))
                if reply["type"] == "ack":
                    key = pub.unacked.pop(reply["id"])
                    earlier = pub.acked.get(key)
                    if earlier and earlier[1] == epoch and earlier[0] != reply["seq"]:
                        pub.tally.errors["ack moved"] = pub.tally.errors.get("ack moved", 0) + 1
                    pub.acked[key] = (reply["seq"], epoch)
                    pub.last_ack_at = time.monotonic()
                    window.release()
                elif reply["type"] == "error":
                    code = reply.get("code", "?")
                    pub.tally.errors[code] = pub.tally.errors.get(code, 0) + 1
                    words = str(reply.get("message", ""))[:200]
                    if words in pub.tally.messages or len(pub.tally.messages) < 20:
                        pub.tally.messages[words] = pub.tally.messages.get(words, 0) + 1
                    window.release()  # stays unacked: resent on the next connection
                elif reply["type"] == "event" and content_of(reply["event"]) in sent_here:
                    pub.own_events += 1
        finally:
            sending.cancel()
            await asyncio.wait({sending})


def content_of(event: dict[str, Any]) -> Any:
    """A publisher's key, which its events and messages carry as their content."""
    return event.get("message", event).get("content")


async def view(viewer: Viewer, port: int) -> None:
    url = f"ws://127.0.0.1:{port}/api/v1/stream/{viewer.session_id}"
    async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
        resume: dict[str, Any] = {}
        if viewer.epoch is not None:
            resume = {"last_seq": viewer.last_seq, "epoch": viewer.epoch}
        welcome = await hello(ws, **resume)
        if resume and not welcome["resumed"]:
            viewer.not_resumed += 1
            viewer.seen.append((welcome["epoch"], -1))  # a reload: the seqs start over
            viewer.last_seq = 0  # what the store holds is read by the check, not here
        elif resume and welcome["epoch"] != viewer.epoch:
            viewer.problems.append(f"resumed onto epoch {welcome['epoch']} from {viewer.epoch}")
        if not resume or not welcome["resumed"]:
            viewer.last_seq = welcome["last_seq"]
        viewer.epoch = welcome["epoch"]
        while True:
            frame = json.loads(await recv_within(ws, 3 * PATIENCE))
            if frame["type"] != "event":
                continue
            seq = frame["seq"]
            if seq != viewer.last_seq + 1:
                viewer.problems.append(f"seq {seq} after {viewer.last_seq} ({viewer.epoch})")
            viewer.last_seq = seq
            viewer.seen.append((viewer.epoch, seq))
            viewer.last_event_at = time.monotonic()


async def create_sessions(created: list[str], tally: Tally, ports: Any) -> None:
    """A new session every half second, one message in it, then gone."""
    n = 0
    while True:
        live = [p for p in ports() if p]
        n += 1
        if live:
            url = f"ws://127.0.0.1:{random.choice(live)}/api/v1/stream/new-{n}"
            try:
                async with connect(url, open_timeout=PATIENCE, close_timeout=2) as ws:
                    await hello(ws, create=True, role="agent", user_id="creator")
                    await ws.send(
                        json.dumps(
                            {
                                "type": "event",
                                "id": 1,
                                "key": "only",
                                "event": {"type": "token", "content": "x"},
                            }
                        )
                    )
                    reply = json.loads(await recv_within(ws, PATIENCE))
                    if reply["type"] == "ack":
                        created.append(f"new-{n}")
                    else:
                        tally.errors[reply.get("code", "?")] = (
                            tally.errors.get(reply.get("code", "?"), 0) + 1
                        )
            except LOST as error:
                tally.closed(error)
            except RuntimeError as error:
                with contextlib.suppress(Exception):
                    tally.closes[str(error)[:60]] = tally.closes.get(str(error)[:60], 0) + 1
        await asyncio.sleep(0.5)
