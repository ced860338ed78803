"""A message sent in many tiny fragments, against a real server over a real socket: each
fragment websockets holds until the message ends costs the server a frame object
(some 176 bytes) whatever its payload, for 6 bytes of the peer's. So the fragments of a
message not ended are charged to the share of ``--memory-budget`` for frames arriving
by their count as well as their bytes, and a message of empty fragments is held to the
floor of rate like any other (arriving_frames.py).

Found (r381): 300 peers each holding a message of 4,095 one-byte fragments took a
server from 74 to 290 MB of RSS, where the share was 16 MiB; and a message of empty
fragments was never charged nor timed, so a peer answering the keepalive's Pings held
its 4,095 fragments for as long as it liked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.messages import MAX_FRAGMENTS

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.server import arriving_frames
from tests.support import attach, run_server
from tests.test_arriving_frames import KIB, arriving, close_of, masked_frame, until


def fragments(count: int, payload: bytes = b"") -> bytes:
    """The start of a text message and ``count - 1`` continuation fragments, not ended."""
    head, first = masked_frame(b'{"type": "ping", "id": 1, "x": "' + payload, fin=False)
    rest = [b"".join(masked_frame(payload, opcode=0x0, fin=False)) for _ in range(count - 1)]
    return head + first + b"".join(rest)


async def test_tiny_fragments_are_charged_by_their_count_past_the_share() -> None:
    # A share of 1 MiB and a head (a budget of 4 MiB): four peers' 4,095 fragments of
    # one byte each hold some 2.8 MB of frame objects for 16 KB of payload.
    async with run_server(durability="os", memory_budget=4 * 1024 * KIB) as server:
        share = server.arriving_frames.limit
        async with attach(server, role="agent") as (client, _):
            contexts = [attach(server, role="agent") for _ in range(4)]
            peers = [(await context.__aenter__())[0] for context in contexts]
            try:
                closes = [asyncio.ensure_future(close_of(peer)) for peer in peers]
                for peer in peers:
                    peer.ws.transport.write(fragments(MAX_FRAGMENTS - 1, b"a"))
                done, _ = await asyncio.wait(closes, timeout=10.0)
                assert done, "no peer holding thousands of fragments was closed"
                ended = {task.result() for task in done}
                assert ended == {(CloseCode.TOO_SLOW, arriving_frames.SHARE_FULL)}, ended
                assert arriving(server) <= share
                # The server goes on serving the others.
                await client.send({"type": "ping", "id": "still"})
                assert (await client.recv_type("pong"))["id"] == "still"
            finally:
                for task in closes:
                    task.cancel()
                await asyncio.gather(*closes, return_exceptions=True)
                for peer in peers:
                    peer.ws.transport.abort()
                for context in contexts:
                    await context.__aexit__(None, None, None)
        await until(lambda: len(server._open_connections) == 0)
        assert arriving(server) == 0 and not server.arriving_frames._holders


async def test_a_message_of_empty_fragments_is_charged_and_held_to_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", 0.5)
    overrides: dict[str, Any] = {"durability": "os", "ping_interval": None}
    async with run_server(**overrides) as server, attach(server, role="agent") as (peer, _):
        transport = peer.ws.transport
        transport.write(fragments(1000))
        await until(lambda: arriving(server) >= 1000 * arriving_frames.FRAGMENT_BYTES)
        # Bytes of its own (a Pong: a sign of life, not of the message) past the grace:
        # its message has brought no byte at all, and is closed as too slow.
        pong_head, pong = masked_frame(b"alive", opcode=0xA)
        closed = asyncio.ensure_future(close_of(peer))
        while not closed.done():
            transport.write(pong_head + pong)
            await asyncio.wait([closed], timeout=0.2)
        assert closed.result() == (CloseCode.TOO_SLOW, arriving_frames.TOO_SLOW)
    assert arriving(server) == 0 and not server.arriving_frames._holders


async def test_a_message_of_more_fragments_than_allowed_closes_1009() -> None:
    # docs/protocol.md: at most 4,096 fragments (websockets' bound), one more is 1009.
    async with run_server(durability="os") as server, attach(server, role="agent") as (peer, _):
        peer.ws.transport.write(fragments(MAX_FRAGMENTS + 1))
        assert await close_of(peer) == (CloseCode.MESSAGE_TOO_BIG, "too many fragments")
    assert arriving(server) == 0 and not server.arriving_frames._holders
