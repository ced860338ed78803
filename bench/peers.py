"""The drivers' peers: agents that publish and viewers that receive, for Bamboo (the
public protocol, raw websockets) and for the baseline relay, doing the same work.

Frames are built as bytes and read with one small msgspec decoder, so the driver spends
as little CPU as it can: on a 2-core machine it shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bamboo_session.protocol.codec import JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL

CONNECT_TIMEOUT = 30.0


class _Data(msgspec.Struct):
    t: float = 0.0


class _Event(msgspec.Struct):
    type: str = ""
    content: str = ""
    data: _Data | None = None


class Frame(msgspec.Struct):
    """The fields of a server frame (or a relayed publish frame) the drivers look at."""

    type: str
    seq: int = 0
    seqs: list[int] = []  # an acks frame's
    id: int | None = None
    event: _Event | None = None
    epoch: str = ""
    last_seq: int = 0
    resumed: bool = False
    replay: int = 0
    code: str = ""
    message: str = ""


decode_frame = msgspec.json.Decoder(Frame).decode
_encode = msgspec.json.Encoder().encode
_decode_packed = msgspec.msgpack.Decoder(Frame).decode
_pack = msgspec.msgpack.Encoder().encode


def token_frame(index: int, key: str | None = None) -> bytes:
    """A publish frame for a token event whose content is its index (checkable)."""
    frame: dict[str, Any] = {
        "type": "event",
        "id": index,
        "event": {"type": "token", "content": f"token {index} of a bench run"},
    }
    if key is not None:
        frame["key"] = key
    return _encode(frame)


def batch_frame(first: int, count: int) -> bytes:
    """A ``batch`` frame of the token events ``first`` .. ``first + count - 1``, each
    as :func:`token_frame` makes it alone (docs/protocol.md, "Extension: batch
    publish")."""
    items = b",".join(
        b'{"event":{"type":"token","content":"token %d of a bench run"}}' % index
        for index in range(first, first + count)
    )
    return b'{"type":"batch","id":%d,"items":[%s]}' % (first, items)


def timed_frame(sent_at: float) -> bytes:
    """A publish frame carrying its (scheduled) send time for latency measurement."""
    return b'{"type":"event","event":{"type":"custom","name":"t","data":{"t":%r}}}' % sent_at


def timed_frame_packed(sent_at: float) -> bytes:
    """:func:`timed_frame` in MessagePack."""
    data = {"t": sent_at}
    return _pack({"type": "event", "event": {"type": "custom", "name": "t", "data": data}})


def token_index(frame: Frame) -> int:
    """The index a ``token_frame`` put in its content."""
    assert frame.event is not None
    return int(frame.event.content.split()[1])


async def open_ws(url: str, subprotocol: bool = True, msgpack: bool = False) -> ClientConnection:
    chosen = MSGPACK_SUBPROTOCOL if msgpack else JSON_SUBPROTOCOL
    return await connect(
        url,
        subprotocols=[Subprotocol(chosen)] if subprotocol else None,
        compression=None,
        open_timeout=CONNECT_TIMEOUT,
        close_timeout=5,
        max_queue=64,
        ping_interval=None,
    )


async def bamboo_attach(
    base: str,
    session_id: str,
    *,
    role: str = "client",
    create: bool = False,
    last_seq: int | None = None,
    epoch: str | None = None,
    msgpack: bool = False,
) -> tuple[ClientConnection, Frame]:
    """A connection that sent ``hello`` and read ``welcome`` (in MessagePack with
    ``msgpack``)."""
    ws = await open_ws(f"{base}/api/v1/stream/{session_id}", msgpack=msgpack)
    hello: dict[str, Any] = {"type": "hello", "role": role, "create": create}
    if last_seq is not None:
        hello["last_seq"] = last_seq
        hello["epoch"] = epoch
    await ws.send(_pack(hello) if msgpack else _encode(hello), text=not msgpack)
    decode = _decode_packed if msgpack else decode_frame
    welcome = decode(await ws.recv(decode=False))
    if welcome.type != "welcome":
        await ws.close()
        raise RuntimeError(f"expected welcome, got {welcome}")
    return ws, welcome


async def publish_windowed(
    ws: ClientConnection, count: int, window: int, batch: bool = False
) -> None:
    """An agent: ``count`` token events, at most ``window`` unacknowledged at a time.
    With ``batch``, each write sends whatever the window has room for as one ``batch``
    frame (one event alone as an ``event`` frame), as BambooClient does with what is
    queued; without, one ``event`` frame per event."""
    acked = 0
    room = asyncio.Event()

    async def read_acks() -> None:
        nonlocal acked
        try:
            while acked < count:
                frame = decode_frame(await ws.recv(decode=False))
                if frame.type == "ack":
                    acked += 1
                    room.set()
                elif frame.type == "acks":
                    acked += len(frame.seqs)
                    room.set()
                elif frame.type == "error":
                    raise RuntimeError(f"publish refused: {frame.code} {frame.message}")
        finally:
            room.set()  # wake the sender, also when reading failed

    reader = asyncio.create_task(read_acks())
    try:
        index = 0
        while index < count:
            while index - acked >= window:
                if reader.done():
                    reader.result()
                    raise RuntimeError("acks ended early")
                room.clear()
                await room.wait()
            ready = min(window - (index - acked), count - index) if batch else 1
            frame = batch_frame(index, ready) if ready > 1 else token_frame(index)
            await ws.send(frame, text=True)
            index += ready
        await reader
    finally:
        reader.cancel()


async def publish_unacked(ws: ClientConnection, count: int) -> None:
    """A producer of the baseline relay: no acks there, websockets' flow control only."""
    for index in range(count):
        await ws.send(token_frame(index), text=True)


async def receive_events(ws: ClientConnection, count: int, *, numbered: str) -> float:
    """A viewer: reads until ``count`` events arrived, checking they come in order with
    no gap (``numbered``: "seq" for Bamboo, "id" for relayed publish frames). Returns
    the time the last one arrived."""
    expected = 1 if numbered == "seq" else 0
    seen = 0
    while seen < count:
        frame = decode_frame(await ws.recv(decode=False))
        if frame.type != "event":
            continue
        number = frame.seq if numbered == "seq" else frame.id
        if number != expected:
            raise RuntimeError(f"event {number} arrived, expected {expected}")
        expected += 1
        seen += 1
    return time.perf_counter()
