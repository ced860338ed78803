"""An event reaches its viewers in a frame: ``{"type": "event", "seq": …, "ts": …,
"event": …}``, or a page of ``events``. The publish's check held the event itself to
the frame limit (``--max-frame-bytes``), so an event just within it reached a viewer in
a frame some 70 bytes over it, which a client that reads frames of the documented
limit closed with 1009, and met again at each resume. The limit an event is held to
now leaves room for the largest envelope of any frame of it, in either codec
(protocol/event_envelope.py ``EVENT_ENVELOPE_BYTES``): every event acknowledged reaches
such a client, live, replayed, and in a page.

A real server on an ephemeral port, real WebSocket viewers that read frames of the
server's limit at most; and the worst-case envelopes, encoded."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from websockets.asyncio.client import connect

from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.frames import EventFrame, EventRecord, Events, History
from bamboo_session.protocol.models import Message, MessageEvent, Role, new_message_id
from bamboo_session.server.app import BambooServer
from tests.support import Peer, attach, run_server, stream_url

LIMIT = 4096
MOST = LIMIT - EVENT_ENVELOPE_BYTES  # the largest event a publish may hold


def controls(length: int) -> str:
    """Text of ``length`` bytes in JSON, as short as can be in MessagePack: a control
    character is 6 bytes in JSON (``\\u0001``), one in MessagePack, so a MessagePack
    publish within the frame limit holds it."""
    return "\x01" * (length // 6) + "x" * (length % 6)


def token_of(size: int) -> dict[str, Any]:
    """A token event of ``size`` bytes in JSON (its largest codec)."""
    return {"type": "token", "content": controls(size - len(b'{"type":"token","content":""}'))}


def floats_of(size: int) -> dict[str, Any]:
    """A custom event of ``size`` bytes in MessagePack (floats: 9 bytes there, 4 in
    JSON, so a JSON publish within the frame limit holds it)."""
    for text in range(size):
        event = {"type": "custom", "name": "n", "data": {"f": [0.5] * 300, "t": "x" * text}}
        if len(msgspec.msgpack.encode(event)) == size:
            return event
    raise AssertionError(size)


def message_of(size: int) -> dict[str, Any]:
    """A message without ``id`` and ``created_at`` whose event is ``size`` bytes in
    JSON as its publish is checked, before the server fills them in."""
    empty = len(JSON.encode(MessageEvent(Message(Role.USER, ""))))
    return {"role": "user", "content": controls(size - empty)}


def publish(kind: str, size: int, request_id: int) -> dict[str, Any]:
    if kind == "message":
        return {"type": "message", "id": request_id, "message": message_of(size)}
    event = token_of(size) if kind == "token" else floats_of(size)
    return {"type": "event", "id": request_id, "event": event}


async def answer(peer: Peer, frame: dict[str, Any]) -> dict[str, Any]:
    await peer.send(frame)
    while (reply := await peer.recv())["type"] not in ("ack", "error"):
        pass  # presence, the other publisher's events
    return reply


async def reading_viewer(server: BambooServer, msgpack: bool, **hello: Any) -> Any:
    """A viewer that reads frames of at most the server's limit, as documented."""
    subprotocol = "bamboo.v1.msgpack" if msgpack else "bamboo.v1"
    ws = await connect(
        stream_url(server, "s"),
        subprotocols=[subprotocol],
        max_size=LIMIT,  # type: ignore[list-item]
    )
    peer = Peer(ws, msgpack)
    await peer.send({"type": "hello", **hello})
    assert (await peer.recv())["type"] == "welcome"
    return peer


async def test_every_event_acknowledged_reaches_a_viewer_within_the_frame_limit() -> None:
    kinds = ["token", "floats", "message"]
    async with run_server(max_frame_bytes=LIMIT) as server:
        async with attach(server, "s", create=True):
            viewers = [await reading_viewer(server, msgpack) for msgpack in (False, True)]
            async with (
                attach(server, "s", role="agent") as (json_agent, _),
                attach(server, "s", role="agent", msgpack=True) as (msgpack_agent, _),
            ):
                # Each kind by the codec whose frame of it is the smaller.
                agents = {"token": msgpack_agent, "floats": json_agent, "message": msgpack_agent}
                # Just over what a frame has room for (the old check took them), and
                # the largest with room.
                acked = []
                for request_id, (kind, size) in enumerate(
                    (kind, size) for kind in kinds for size in (LIMIT, MOST + 1, MOST)
                ):
                    reply = await answer(agents[kind], publish(kind, size, request_id))
                    if reply["type"] == "ack":
                        acked.append((kind, size))
                    else:
                        assert reply["code"] == "too_large", reply
            for viewer in viewers:  # every event acknowledged, live
                got = [(await viewer.recv_type("event"))["seq"] for _ in acked]
                assert got == list(range(1, len(acked) + 1))
                await viewer.ws.close()
            assert acked == [(kind, MOST) for kind in kinds]
            for msgpack in (False, True):  # replayed at a resume, and in a page each
                viewer = await reading_viewer(server, msgpack, last_seq=0)
                assert [(await viewer.recv_type("event"))["seq"] for _ in kinds] == [1, 2, 3]
                for seq in (1, 2, 3):
                    page = {"type": "events", "id": 2**63 - 1, "after_seq": seq - 1, "limit": 1}
                    reply = await viewer.request(page, "events")
                    assert [e["seq"] for e in reply["events"]] == [seq]
                await viewer.ws.close()


def test_the_worst_envelope_of_the_largest_event_is_within_the_limit() -> None:
    """The longest of every field around the event: seq and last_seq of 20 digits, a
    time with microseconds and an offset, the longest id a request may carry (128
    control characters, 770 bytes of JSON; 128 characters of 4 bytes of UTF-8, 515 of
    MessagePack; an integer, 20 and 9), a Redis store's epoch (25 characters), a
    message's id and time filled in by the server. The largest frame is exactly the
    limit: no byte more, none spare."""
    seq, epoch = 2**64 - 1, "e" * 16 + "." + "t" * 8
    request_ids = [-(2**63), "\x01" * 128, "\U0010ffff" * 128]
    ts = datetime(9999, 12, 31, 23, 59, 59, 999_999, timezone(timedelta(hours=23, minutes=59)))
    largest = 0
    for codec in (JSON, MSGPACK):
        token = msgspec.json.encode(token_of(MOST))
        assert len(token) == MOST and len(MSGPACK.encode(msgspec.json.decode(token))) < MOST
        sent = Message(Role.USER, message_of(MOST)["content"])
        assert len(JSON.encode(MessageEvent(sent))) == MOST  # as its publish is checked
        stored = Message(Role.USER, sent.content, new_message_id(), ts.astimezone(UTC))
        events = [msgspec.Raw(token), msgspec.Raw(JSON.encode(MessageEvent(stored)))]
        for event, request_id in itertools.product(events, request_ids):
            frames = [
                EventFrame(seq, ts, event),
                Events([EventRecord(seq, ts, event)], seq, request_id, epoch),
            ]
            sizes = [len(codec.encode(frame)) for frame in frames]
            largest = max(largest, *sizes)
        for request_id in request_ids:
            history = History([stored], has_more=False, id=request_id)
            largest = max(largest, len(codec.encode(history)))
    assert largest == LIMIT
    assert EVENT_ENVELOPE_BYTES == 1019  # as docs/protocol.md (MessagePack) says
    assert json.loads(JSON.encode(Events([], seq, None, epoch)))["epoch"] == epoch
