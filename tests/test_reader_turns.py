"""A connection's reader gives the loop a turn after each refused frame: a peer whose
pipelined frames are each costly to refuse (a custom event over the free-form values
bound, a whole decode each) no longer holds the server until its whole queue is
drained, and another connection is answered meanwhile. Order, not time, is asserted."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.protocol.free_form import MAX_FREE_VALUES
from server.app import BambooServer
from server.connection import FRAMES_PER_TURN
from tests.support import Peer, attach, close_reading, run_server, stream_url

# Refused frames sent at once: all of them queued before the first is handled (deflated
# they fit in one read, and --max-queue holds them all), fewer than the outbox holds.
FLOOD = 40
TOO_MANY = {"type": "custom", "name": "rows", "data": [0] * (MAX_FREE_VALUES + 1)}


def send_at_once(peer: Peer, frames: list[dict[str, Any]]) -> None:
    """``frames`` written in one go, the server given no turn between them (one send
    each may let it read the first few on their own)."""
    for frame in frames:
        peer.ws.protocol.send_text(json.dumps(frame).encode())
    peer.ws.transport.write(b"".join(peer.ws.protocol.data_to_send()))


@contextlib.asynccontextmanager
async def deflate_peer(server: BambooServer) -> AsyncIterator[Peer]:
    """An attached peer whose frames are deflated: a refused frame is ~100 bytes."""
    async with connect(
        stream_url(server),
        subprotocols=["bamboo.v1"],  # type: ignore[list-item]
        compression="deflate",
        max_queue=None,  # every error the server sends is read in, whatever the test reads
    ) as ws:
        peer = Peer(ws)
        try:
            welcome = await peer.request({"type": "hello", "create": True}, "welcome")
            assert welcome["type"] == "welcome", welcome
            yield peer
        finally:
            await close_reading(ws)


async def test_another_connection_is_answered_while_refused_frames_are_handled() -> None:
    flood = [{"type": "event", "id": n, "event": TOO_MANY} for n in range(FLOOD)]
    sent_before_pong = await frames_sent_before_another_pong(flood, "error")
    # Before, the flooder's reader refused all its queued frames in one pass: every
    # error was sent before the other connection's ping was even read.
    assert sent_before_pong < FLOOD, sent_before_pong


async def test_another_connection_is_answered_while_pings_are_handled() -> None:
    """Pings await nothing: a turn every FRAMES_PER_TURN frames."""
    pings = 100 * FRAMES_PER_TURN
    flood = [{"type": "ping", "id": n} for n in range(pings)]
    sent_before_pong = await frames_sent_before_another_pong(flood, "pong")
    assert sent_before_pong < pings, sent_before_pong


async def frames_sent_before_another_pong(flood: list[dict[str, Any]], reply_type: str) -> int:
    """How many replies to ``flood``, sent at once by one peer, the server had sent
    when it answered another peer's ping, sent once the first reply came."""
    # No byte rate: a refused frame's debt (what its decode may have cost) would hold
    # the flood's later frames back, and the turns are what is looked at here.
    async with (
        run_server(compression=True, max_queue=len(flood) * 2, rate_limit_bytes=0) as server,
        deflate_peer(server) as flooder,
        attach(server, create=True) as (other, _),
    ):
        send_at_once(flooder, flood)
        assert (await flooder.recv())["type"] == reply_type
        pong = await other.request({"type": "ping", "id": "other"}, "pong")
        assert pong["id"] == "other"
        # The flooder's replies come in as the server sends them, read or not (its
        # client queues them all): those there when the pong came were sent before it.
        sent_before_pong = 1 + len(flooder.ws.recv_messages.frames)
        for _ in range(len(flood) - 1):
            reply = await flooder.recv()
            assert reply["type"] == reply_type, reply
            assert reply_type != "error" or reply["code"] == "bad_request", reply
        return sent_before_pong
