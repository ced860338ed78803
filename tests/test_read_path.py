"""The way a frame read reaches its connection's reader (server/sliced_reads.py,
websockets' parser and assembler): whole and fragmented messages in the order the peer
sent them, under ``--max-queue`` and ``--max-queue-bytes``, text checked as UTF-8
either way.

Real server, real websockets clients; frames are sent without a suspending await
between them, so the server parses them in one read, mixed as they were sent.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from tests.instances import eventually
from tests.support import Peer, attach, open_peer, run_server, token
from tests.test_incoming_queue import MIB, burst_peak, traced


def publish(request_id: int, pad: int = 0) -> dict[str, object]:
    return {"type": "event", "id": request_id, "event": token(f"t{request_id}" + "x" * pad)}


async def send_mixed(peer: Peer, count: int, pad: int) -> None:
    """``count`` publishes, every third one in three fragments, with a ping frame
    (websockets' control frame) between each fragmented one and the next."""
    for request_id in range(count):
        frame = publish(request_id, pad)
        if request_id % 3:
            await peer.send(frame)
            continue
        if peer.msgpack:
            encoded: bytes | str = msgspec.msgpack.encode(frame)
        else:
            encoded = json.dumps(frame)
        third = len(encoded) // 3
        await peer.ws.send([encoded[:third], encoded[third : 2 * third], encoded[2 * third :]])
        await peer.ws.ping()


@pytest.mark.parametrize("msgpack", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(
    "bounds",
    [{}, {"max_queue": 2, "max_queue_bytes": 1024}],
    ids=["default-bounds", "queue-full-often"],
)
async def test_whole_and_fragmented_frames_are_answered_and_stored_in_order(
    msgpack: bool, bounds: dict[str, int]
) -> None:
    # Frames of some 400 bytes, two frames or 1 KiB queued at most: reading pauses and
    # resumes many times in the run, across fragments as well as whole frames.
    count, pad = 60, 300
    async with run_server(rate_limit_bytes=0, **bounds) as server:
        async with attach(server, msgpack=msgpack, create=True) as (peer, welcome):
            await send_mixed(peer, count, pad)
            acks = [(await peer.recv_type("ack"))["id"] for _ in range(count)]
            assert acks == list(range(count))
            stored = await server.manager.read_events(welcome["session"]["id"])
            contents = [e.event.content for e in stored]
            assert contents == [f"t{i}" + "x" * pad for i in range(count)]


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
async def test_a_text_frame_that_is_not_utf8_closes_1007_after_those_before_it(
    fragmented: bool,
) -> None:
    async with run_server() as server, attach(server, create=True) as (peer, welcome):
        await peer.send(publish(1))
        bad = json.dumps(publish(2)).encode().replace(b"t2", b"t\xff")
        await peer.ws.send([bad[:10], bad[10:]] if fragmented else bad, text=True)
        await peer.send(publish(3))  # read after the bad one: never handled
        code, _frames = await peer.closed()
        assert code == 1007

        async def stored() -> list[str]:
            events = await server.manager.read_events(welcome["session"]["id"])
            return [e.event.content for e in events]

        await eventually(stored)  # the first one's append may still be under way
        assert await stored() == ["t1"]


async def test_a_hello_that_is_not_utf8_closes_1007() -> None:
    async with run_server() as server:
        async with open_peer(server, "not-utf8") as peer:
            await peer.ws.send(b'{"type":"hello","create":true,"user_id":"\xff"}', text=True)
            code, frames = await peer.closed()
            assert (code, frames) == (1007, [])
        async with attach(server, "not-utf8", create=True) as (_peer, welcome):
            assert welcome["type"] == "welcome"  # the server reads on for others


async def test_max_queue_alone_bounds_the_frames_read_ahead() -> None:
    # 24 deflated frames of 1 MiB in one write, the byte bound far above them all, so
    # only the count holds reading: --max-queue (1) and the next, those a 1 KiB slice
    # inflates to and the one handled, as test_incoming_queue.py has it (under 5 MiB).
    # With no count bound, the whole write is inflated and queued at once (24 MiB).
    with traced():
        peak = await burst_peak(max_queue=1, max_queue_bytes=1 << 30, rate_limit_bytes=0)
    assert peak < 5 * MIB, peak / MIB
