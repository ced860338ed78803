"""Frames read and not handled yet are bounded in bytes as well as in count: a
connection's incoming queue holds one frame of any size and up to
``--max-queue-bytes`` of further frames, inflated, before reading pauses.

With permessage-deflate a 1 MiB frame of repeated bytes is about 1 KiB on the wire, so
``--max-queue`` (4) frames were up to 5 MiB a peer, outside ``--memory-budget``.
Memory is measured with tracemalloc on a real server in this process, as
test_incoming_queue.py does, whose helpers these tests share.
"""

from __future__ import annotations

import tracemalloc

import pytest
from websockets.asyncio.client import connect

from tests.support import run_server, stream_url
from tests.test_incoming_queue import BURST, MIB, deflate_peer, errors, traced

KIB = 1 << 10


def refused(size: int) -> str:
    """A frame of ``size`` bytes that the server refuses at its first field: decoding it
    costs nothing, so what the server holds is the frames waiting for the handler."""
    return '{"type":"zzz","id":1,"pad":"' + "a" * (size - 32) + '"}'


async def peak_over(frames: list[str], **config: object) -> int:
    """Bytes the server's allocations peaked at above the start of ``frames``, sent in
    one go (the server runs in this loop, so it reads them only once all are written),
    until every one of them is answered."""
    async with run_server(compression=True, rate_limit_bytes=0, **config) as server:
        async with deflate_peer(server) as ws:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            for frame in frames:
                await ws.send(frame)
            assert await errors(ws, len(frames)) == ["bad_request"] * len(frames)
            return tracemalloc.get_traced_memory()[1] - start


async def test_frames_bigger_than_the_byte_bound_wait_one_at_a_time() -> None:
    # One frame queued (alone over the 256 KiB bound) and the one being handled, as
    # bytes and as text: 2 MiB measured. With --max-queue (4) alone, five were queued
    # besides the one handled: 6 MiB measured.
    with traced():
        peak = await peak_over([refused(MIB)] * BURST)
    assert peak < 4 * MIB, peak / MIB


@pytest.mark.parametrize("max_queue_bytes", [64 * KIB, 256 * KIB])
async def test_many_frames_under_the_count_wait_within_the_byte_bound(
    max_queue_bytes: int,
) -> None:
    # 200 frames of 64 KiB with a count bound that never applies: the queue holds less
    # than the byte bound and what one 1 KiB slice inflates to (some 14 of these frames:
    # 0.8 MiB measured, for either bound), the handled frame besides. Bounded by the
    # count alone, the server read on: 7-8.5 MiB measured.
    frames = [refused(64 * KIB)] * 200
    with traced():
        peak = await peak_over(frames, max_queue=1000, max_queue_bytes=max_queue_bytes)
    assert peak < max_queue_bytes + 2 * MIB, peak / MIB


async def test_a_message_in_fragments_over_the_byte_bound_is_read_whole() -> None:
    # Its fragments are queued and taken one by one: each take makes room for the next,
    # so a message larger than the bound never waits for room it cannot have.
    text = refused(200 * KIB)
    fragments = [text[start : start + 500] for start in range(0, len(text), 500)]
    async with run_server(compression=True, max_queue=64, max_queue_bytes=1024) as server:
        async with deflate_peer(server) as ws:
            for _ in range(5):
                await ws.send(fragments)
            assert await errors(ws, 5) == ["bad_request"] * 5


# refused(size) is size - 2 bytes: 514 makes two frames of exactly 1024, at the bound.
@pytest.mark.parametrize("size", [514, 600, 1100])
async def test_reading_held_for_bytes_alone_resumes_as_a_take_brings_them_under(
    size: int,
) -> None:
    # --max-queue never applies here, so websockets never pauses: only the byte bound
    # holds reading (two frames of 512 or 598 bytes reach 1024, one of 1098 is over it alone),
    # and only the take that brings the bytes under it can wake reading again. Were
    # that take to skip the wake-up, the frames behind it would never be read: errors
    # waits at most 30 s for each answer.
    count = 100
    async with run_server(max_queue=1000, max_queue_bytes=1024) as server:
        url = stream_url(server, "bytes-only")
        async with connect(url, subprotocols=["bamboo.v1"], compression=None) as ws:
            await ws.send('{"type":"hello","create":true,"user_id":"u"}')
            assert '"welcome"' in await ws.recv()
            for _ in range(count):
                await ws.send(refused(size))
            assert await errors(ws, count) == ["bad_request"] * count
