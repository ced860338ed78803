"""Frames read and not handled yet: what a connection holds of them, inflated, is
bounded by ``--max-queue`` whatever arrives in one read, and a refused frame holds
nothing once answered.

With permessage-deflate a 1 MiB frame of repeated bytes is about 1 KiB on the wire, so
one read of the socket may bring many of them. They were all parsed, inflated, before
the handler took the first: 100 peers sending such frames to a server slow to decode
them held 8 MiB each, 900 MB against a 256 MiB budget. Memory is measured with
tracemalloc on a real server in this process: what its peak rose by while a peer's
burst was read, and what is still allocated once every frame has been answered.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame
from websockets.protocol import State
from websockets.uri import parse_uri

from bamboo_session.server.app import BambooServer
from tests.support import run_server, stream_url

MIB = 1 << 20
BURST = 24  # frames of about 1 MiB inflated, sent in one write of some 30 KiB
# A frame the server refuses at its first field: decoding it costs nothing, so what the
# server holds while reading the burst is the frames waiting for the handler.
BIG = '{"type":"zzz","id":1,"pad":"' + "a" * (MIB - 64) + '"}'


@contextmanager
def traced() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


@asynccontextmanager
async def deflate_peer(server: BambooServer) -> AsyncIterator[ClientConnection]:
    """A peer attached over permessage-deflate."""
    url = stream_url(server, "queue-bound")
    async with connect(url, subprotocols=["bamboo.v1"], compression="deflate", max_size=None) as ws:
        await ws.send('{"type":"hello","create":true,"user_id":"u"}')
        assert '"welcome"' in await ws.recv()
        yield ws


async def errors(ws: ClientConnection, count: int) -> list[str]:
    """The codes of the next ``count`` error frames."""
    codes = []
    while len(codes) < count:
        frame = await asyncio.wait_for(ws.recv(), 30)
        if '"error"' in frame:
            codes.append(frame.split('"code":"', 1)[1].split('"', 1)[0])
    return codes


async def burst_peak(**config: object) -> int:
    """Bytes the server's allocations peaked at above the start of a burst of frames
    sent in one write (the server runs in this loop, so it reads them in one go),
    once every frame has been answered."""
    async with run_server(compression=True, **config) as server, deflate_peer(server) as ws:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(BURST):
            await ws.send(BIG)  # no await suspends: all are written before any is read
        assert await errors(ws, BURST) == ["bad_request"] * BURST  # none lost or cut
        return tracemalloc.get_traced_memory()[1] - start


@pytest.mark.parametrize("rate_limit_bytes", [0, 2 * MIB], ids=["unmetered", "metered"])
async def test_a_burst_of_deflated_frames_waits_in_the_socket_not_inflated(
    rate_limit_bytes: int,
) -> None:
    # Held: --max-queue frames (1 here) and the next (websockets pauses past it), those
    # a 1 KiB slice of the read may inflate to, the one handled as text (3 MiB here).
    # Before, the whole read was inflated at once unmetered (24 MiB), a burst of the
    # byte rate and a 4 KiB slice metered (8 MiB).
    with traced():
        peak = await burst_peak(max_queue=1, rate_limit_bytes=rate_limit_bytes)
    assert peak < 5 * MIB, peak / MIB


async def test_frames_with_too_many_free_form_values_hold_nothing_once_refused() -> None:
    # 100,000 empty objects, 300 KB of JSON: about 7 MB decoded, each time.
    frame = (
        '{"type":"event","id":1,"event":{"type":"custom","name":"n","data":['
        + "{}," * 100_000
        + "{}]}}"
    )
    with traced():
        # No byte rate: each refusal would cost some 9 s of debt (what its decode may
        # have cost), and what it leaves allocated is what is looked at here.
        async with run_server(rate_limit_bytes=0) as server, deflate_peer(server) as ws:
            await ws.send(frame)  # the first: what a refusal leaves allocated for good
            assert await errors(ws, 1) == ["bad_request"]
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(10):
                await ws.send(frame)
            assert await errors(ws, 10) == ["bad_request"] * 10
            after = tracemalloc.get_traced_memory()[0]
    assert after - before < MIB, (after - before) / MIB


def deflated_frames(*texts: str) -> bytes:
    """Text frames as a client compresses them (the server's defaults: 12-bit windows,
    context kept), on the wire."""
    writer = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    writer.state = State.OPEN
    writer.extensions = [PerMessageDeflate(False, False, 12, 12)]
    for text in texts:
        writer.send_text(text.encode())
    return b"".join(writer.data_to_send())


async def test_deflated_frames_sent_along_with_the_request_wait_their_turn_too() -> None:
    # Up to 64 KiB may come behind the request, before the answer: 24 MiB inflated.
    with traced():
        async with run_server(compression=True, max_queue=1, rate_limit_bytes=0) as server:
            peer = ClientProtocol(
                parse_uri(stream_url(server, "early")),
                extensions=[ClientPerMessageDeflateFactory()],
                subprotocols=["bamboo.v1"],  # type: ignore[list-item]
            )
            peer.send_request(peer.connect())
            hello = '{"type":"hello","create":true,"user_id":"u"}'
            frames = deflated_frames(hello, *[BIG] * BURST)
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            writer.write(b"".join(peer.data_to_send()) + frames)
            codes: list[str] = []
            while len(codes) < BURST:
                data = await asyncio.wait_for(reader.read(65536), 30)
                assert data, f"closed after {codes}"
                peer.receive_data(data)
                for event in peer.events_received():
                    if isinstance(event, Frame) and b'"error"' in event.data:
                        codes.append(json.loads(event.data)["code"])
            peak = tracemalloc.get_traced_memory()[1] - start
            writer.close()
    assert codes == ["bad_request"] * BURST
    assert peak < 5 * MIB, peak / MIB
