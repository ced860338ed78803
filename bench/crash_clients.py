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
import random
import socket
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

WINDOW = 32  # events in flight per publisher
# How a killed server shows in a client: a dropped connection, a refused or broken
# handshake, a timeout.
LOST = (WebSocketException, OSError, TimeoutError)


@dataclasses.dataclass(frozen=True)
class Keepalive:
    """websockets' keepalive of a client's connections (a Ping every ``ping_interval``
    seconds, the connection failed when its Pong takes longer than ``ping_timeout``)
    and how long its close waits for the server's (then it aborts)."""

    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = 1.0

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# websockets' defaults: a killed server resets its connections, nothing goes silent.
DEFAULT_KEEPALIVE = Keepalive()


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
    padding: int = 0  # bytes each event's content carries after its key

    def key(self, index: int) -> str:
        return f"{self.name}-{index}"

    def frame(self, index: int) -> str:
        return event_frame(index, self.unacked[index], self.padding)


@dataclasses.dataclass
class Reader:
    session_id: str
    seen: list[int] = dataclasses.field(default_factory=list)
    contents: list[str] = dataclasses.field(default_factory=list)
    epoch: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SlowRead:
    """How a reader too slow to keep up reads (bench/chaos_soak.py): through a socket
    with a small receive buffer, pausing now and then, so that the server's send queue
    for it fills and it is closed with 4429 (or, in a graceful stop, drained slowly)."""

    rng: random.Random
    receive_buffer: int = 4096
    pause_chance: float = 0.02  # after each frame
    pause: tuple[float, float] = (0.5, 2.0)  # seconds, drawn uniformly
    pauses: int = 0

    async def socket(self, url: str) -> socket.socket:
        """A connected socket to ``url``'s host and port, its receive buffer set small
        before the connect (the window it offers is scaled from it)."""
        where = urlsplit(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_connect(sock, (where.hostname, where.port)), 5)
        except BaseException:
            sock.close()
            raise
        return sock

    async def after_frame(self) -> None:
        if self.rng.random() < self.pause_chance:
            self.pauses += 1
            await asyncio.sleep(self.rng.uniform(*self.pause))


async def hello(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "hello", **fields}))
    welcome: dict[str, Any] = json.loads(await ws.recv())
    if welcome["type"] != "welcome":
        raise RuntimeError(f"no welcome: {welcome}")
    return welcome


def event_frame(index: int, key: str, padding: int = 0) -> str:
    event = {"type": "token", "content": key + "." * padding}
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
    server: Endpoint,
    pub: Publisher,
    *,
    attached: asyncio.Event | None = None,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> None:
    """Re-sends what is unacknowledged, then new events, until the connection drops
    (or ``keepalive`` finds it dead); ``attached`` is set once the server answered its
    hello."""
    url = server.url(pub.session_id)
    async with connect(url, open_timeout=5, **keepalive.options()) as ws:
        await hello(ws, create=True, role="agent")
        if attached is not None:
            attached.set()
        window = asyncio.Semaphore(WINDOW)

        async def send(index: int) -> None:
            await window.acquire()
            await ws.send(pub.frame(index))

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


async def settle(
    server: Endpoint, pubs: list[Publisher], readers: list[Reader], patience: float
) -> None:
    """The end of a soak: every publisher's unacknowledged events sent again until
    acknowledged, within ``patience`` seconds, then each reader followed up to the last
    seq acknowledged in its session, for as long as it gets events: a reader left far
    behind (a slow one, hundreds of megabytes) may take minutes to catch up on a busy
    machine. One that gets none for ``patience`` seconds has a problem saying where it
    stopped."""
    await asyncio.wait_for(asyncio.gather(*(retry_pending(server, p) for p in pubs)), patience)
    for reader in readers:
        acked = (seq for p in pubs if p.session_id == reader.session_id for seq in p.acked.values())
        await catch_up(server, reader, max(acked, default=0), patience)


async def catch_up(server: Endpoint, reader: Reader, until_seq: int, patience: float) -> None:
    """Follows ``reader`` up to ``until_seq`` while each ``patience`` seconds bring it
    at least one event; else stops it, with a problem."""
    following = asyncio.create_task(follow(server, reader, until_seq=until_seq))
    count = len(reader.seen)
    while not (await asyncio.wait({following}, timeout=patience))[0]:
        if len(reader.seen) == count:
            following.cancel()
            await asyncio.wait({following})
            at = reader.seen[-1] if reader.seen else 0
            reader.problems.append(
                f"no event in {patience:.0f} s while catching up at seq {at} of {until_seq}"
            )
            return
        count = len(reader.seen)
    following.result()


async def retry_pending(server: Endpoint, pub: Publisher) -> None:
    """Re-sends every unacknowledged event, a window at a time, until all are acked."""
    async with connect(server.url(pub.session_id), open_timeout=5, close_timeout=1) as ws:
        await hello(ws, create=True, role="agent")
        pending = list(pub.unacked)
        for start in range(0, len(pending), WINDOW):
            waiting = set(pending[start : start + WINDOW])
            for index in sorted(waiting):
                await ws.send(pub.frame(index))
            while waiting:
                waiting.discard(note_reply(pub, json.loads(await ws.recv())))


async def follow(
    server: Endpoint,
    reader: Reader,
    until_seq: int | None = None,
    *,
    attached: asyncio.Event | None = None,
    slow: SlowRead | None = None,
    keepalive: Keepalive = DEFAULT_KEEPALIVE,
) -> None:
    """Reads events, resuming after the last one seen (from the start the first time),
    until the connection drops (or ``keepalive`` finds it dead) or ``until_seq`` is
    reached; ``attached`` is set once the server answered its hello. With ``slow``,
    reads as that says."""

    def last() -> int:
        return reader.seen[-1] if reader.seen else 0

    url = server.url(reader.session_id)
    # A slow reader's client buffers few frames, so that its socket's window closes.
    options: dict[str, Any] = (
        {} if slow is None else {"sock": await slow.socket(url), "max_queue": 4}
    )
    async with connect(url, open_timeout=5, **keepalive.options(), **options) as ws:
        welcome = await hello(ws, create=True, last_seq=last(), epoch=reader.epoch)
        if not welcome["resumed"]:
            reader.problems.append(f"not resumed after seq {last()}: {welcome}")
        reader.epoch = welcome["epoch"]
        if attached is not None:
            attached.set()
        received = 0  # events on this connection
        while until_seq is None or last() < until_seq:
            frame = json.loads(await ws.recv())
            if frame["type"] != "event":
                continue
            received += 1
            if frame["seq"] != last() + 1:
                reader.problems.append(
                    f"seq {frame['seq']} after {last()}, event {received} of a connection "
                    f"welcomed with last_seq {welcome['last_seq']}, replay {welcome['replay']}, "
                    f"its id {welcome['connection_id']}"
                )
            reader.seen.append(frame["seq"])
            reader.contents.append(frame["event"]["content"])
            if slow is not None:
                await slow.after_frame()
