"""A message still arriving while the server holds the connection's reading back for
its own handler (websockets' incoming queue full, by ``--max-queue`` frames or by
``--max-queue-bytes``) is not held to its 1 KiB/s for that time: the peer's bytes wait
in the socket meanwhile, and its TCP window closes (arriving_frames.py, sliced_reads.py
``reading_held_seconds``); nor, for the same reason, against the keepalive's Pong.
Counted against the peer, a store that stalled the handler had the peer closed 4429
``too slow to send`` for the store's slowness (r306), or 1011 ``keepalive ping
timeout`` once the stall outlasted the Pong's timeout.

The handler is held by the session's creation, stalled in the store, while the peer's
frames, pipelined behind its ``hello``, fill the queue; raw frames are written under a
real client's connection, masked as a client's are."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bamboo_session.server import arriving_frames
from bamboo_session.server.link_progress import MIN_LINK_RATE
from tests.support import open_peer, run_server, token
from tests.test_arriving_frames import arriving, event_frame, masked_frame, until

STALL = 4.0  # seconds the store holds the session's creation, and the handler with it
GRACE = 0.5
# What the read that fills the queue carries of the message: 2 KiB at most, well short
# of the 3.5 KiB that 1 KiB/s owes over the stall, past the grace.
FIRST_BYTES = 512
SLICE = 4096  # sliced_reads.PARSE_SLICE


def whole_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    head, masked = masked_frame(payload, opcode, fin)
    return head + masked


def requests_ahead(count: int, size: int) -> list[bytes]:
    """``hello``, then ``count`` events that take ``size`` bytes or so, all of them
    frames: the requests pipelined ahead of the message."""
    hello = whole_frame(json.dumps({"type": "hello"}).encode())
    events = [whole_frame(event_frame(size // count, frame_id)) for frame_id in range(1, 1 + count)]
    return [hello, *events]


# Reading held by websockets for --max-queue after the read, by the server before the
# read's second slice for either bound: the message's second fragment crosses it.
@pytest.mark.parametrize(
    ("queue_bound", "second_bytes"),
    [
        ({"max_queue": 2}, 256),
        ({"max_queue": 2}, 1536),
        ({"max_queue": 1000, "max_queue_bytes": 1024}, 1536),
    ],
)
async def test_the_wait_for_the_handler_does_not_count_against_a_message_arriving(
    monkeypatch: pytest.MonkeyPatch, queue_bound: dict[str, Any], second_bytes: int
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", GRACE)
    async with run_server(durability="os", ping_interval=None, **queue_bound) as server:
        storage: Any = server.storage
        create, created = storage.create_session, asyncio.Event()

        async def stalled_create(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(STALL)  # a store that stalls, then goes on
            created.set()
            return await create(*args, **kwargs)

        monkeypatch.setattr(storage, "create_session", stalled_create)
        async with open_peer(server) as peer:
            transport = peer.ws.transport
            message = json.dumps({"type": "event", "id": 9, "event": token("m" * 6000)}).encode()
            ahead = b"".join(requests_ahead(4, 2400))
            first = whole_frame(message[:FIRST_BYTES], fin=False)
            sent = FIRST_BYTES + second_bytes
            second = whole_frame(message[FIRST_BYTES:sent], opcode=0x0, fin=False)
            # One write: the message's first fragment in the first slice parsed, with
            # the frames that fill the queue; its second within it or across its end.
            assert len(ahead + first) < SLICE
            assert (len(ahead + first + second) > SLICE) == (second_bytes > 1024)
            transport.write(ahead + first + second)
            await until(lambda: arriving(server) >= FIRST_BYTES)
            connection = next(iter(server._open_connections))
            assert connection._queue_full()  # its reading waits for the handler
            # The peer sends on once answered (its TCP window closed meanwhile, here it
            # just waits): the rest at twice the floor, as one that paces on its link.
            welcome = await peer.recv(timeout=STALL + 5)
            assert welcome["type"] == "welcome", welcome
            assert created.is_set()
            for frame_id in range(1, 5):
                assert (await peer.recv_type("ack"))["id"] == frame_id
            step = 2 * MIN_LINK_RATE // 10
            for start in range(sent, len(message), step):
                if transport.is_closing():
                    break  # closed: the ack below says how
                last = start + step >= len(message)
                fragment = message[start : start + step]
                transport.write(whole_frame(fragment, opcode=0x0, fin=last))
                await asyncio.sleep(0.1)
            ack = await peer.recv_type("ack", timeout=10)
            assert ack["id"] == 9 and ack["seq"] == 5, ack
            assert connection.reading_held_seconds() >= STALL - 1.0
        assert arriving(server) == 0 and not server.arriving_frames._holders


async def test_the_wait_for_the_handler_does_not_count_against_the_pong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Ping every 0.5 s, its Pong owed within 1 s of reading: the peer's Pongs wait
    # in its socket behind its frames while the handler is held for 4 s.
    config: dict[str, Any] = {"ping_interval": 0.5, "ping_timeout": 1.0, "max_queue": 2}
    async with run_server(durability="os", **config) as server:
        storage: Any = server.storage
        create = storage.create_session

        async def stalled_create(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(STALL)  # a store that stalls, then goes on
            return await create(*args, **kwargs)

        monkeypatch.setattr(storage, "create_session", stalled_create)
        async with open_peer(server) as peer:
            peer.ws.transport.write(b"".join(requests_ahead(4, 2400)))
            await until(lambda: bool(server._open_connections))
            connection = next(iter(server._open_connections))
            await until(connection._queue_full)
            welcome = await peer.recv(timeout=STALL + 5)
            assert welcome["type"] == "welcome", welcome
            for frame_id in range(1, 5):
                assert (await peer.recv_type("ack"))["id"] == frame_id
            await peer.send({"type": "ping", "id": 5})
            assert (await peer.recv_type("pong"))["id"] == 5
