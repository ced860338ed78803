"""Messages a real client library sends in fragments (websockets' client, as a
browser may): 1 MiB in 4 KiB fragments, with permessage-deflate and Pings between the
fragments, at the smallest share of frames arriving (``--max-frame-bytes`` and the
slack of as many fragments as a message may have). Each fragment held is charged 176
bytes (arriving_frames.py); none of that closes such a client, one message after
another, and the share is all given back after each."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.server.app import BambooServer
from tests.support import run_server, stream_url, token

KIB = 1024
FRAGMENT = 4 * KIB


def event_of(size: int, number: int) -> str:
    """An event frame of about ``size`` bytes of JSON (text that deflate squeezes), 1,024
    of them in a field the server ignores: its event leaves room for the envelope of
    the frames viewers get it in (docs/protocol.md, MessagePack), so it is stored."""
    content = (f"token {number} " * (size // 8))[: size - 1224]
    frame = {"type": "event", "id": number, "key": f"k{number}", "pad": "p" * 1024}
    frame["event"] = token(content)
    return json.dumps(frame)


async def fragments(ws: ClientConnection, message: str, pings: bool) -> AsyncIterator[str]:
    for start in range(0, len(message), FRAGMENT):
        yield message[start : start + FRAGMENT]
        if pings and start // FRAGMENT % 16 == 0:
            await ws.ping()  # a keepalive's Ping between fragments (not awaited)


async def answer(ws: ClientConnection) -> dict[str, object]:
    while (reply := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] not in (
        "ack",
        "error",
    ):
        pass
    return reply


@pytest.mark.parametrize("compression", [False, True])
async def test_a_large_message_in_4_kib_fragments_is_acked_again_and_again(
    compression: bool,
) -> None:
    overrides = {"memory_budget": 4 * 1024 * KIB, "max_frame_bytes": 1024 * KIB}
    async with run_server(durability="os", compression=compression, **overrides) as server:
        assert server.arriving_frames.limit < 2 * 1024 * KIB  # the share's floor
        url = stream_url(server, "fragmented")
        async with connect(
            url, compression="deflate" if compression else None, max_size=None
        ) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await ws.recv())["type"] == "welcome"
            for number in range(1, 4):
                message = event_of(1024 * KIB - 64, number)
                await ws.send(fragments(ws, message, pings=number != 2))
                reply = await answer(ws)
                assert reply == {"type": "ack", "seq": number, "id": number}, reply
                assert_all_given_back(server)


def assert_all_given_back(server: BambooServer) -> None:
    assert server.arriving_frames.used == 0 and not server.arriving_frames._holders
