"""A close the server starts reads the peer's close reply at once, however many of the
peer's frames sit unread: a handshake refused behind pipelined requests (docs/protocol.md
lets a client send them right after ``hello``) left up to ``--max-queue`` frames in
websockets' queue, which then stopped the socket being read. The peer's close reply was
never seen, and every such close waited out ``--close-timeout`` before the server
dropped the socket (server/http_wire.py ``await_close_reply``). A close the peer starts,
or a frame that fails the connection, is no such close: the requests read with it are
still handled."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from tests.support import attach, run_server, stream_url, token
from tests.test_wire_floods import masked_frame

# Long beside the wait below: a close that waits for it has not read the reply.
CLOSE_TIMEOUT = 60.0
ENDED_WITHIN = 20.0
PIPELINED = 8  # past --max-queue (4): websockets stops reading at five unread


async def closed_by_server(url: str, first: str) -> int | None:
    """Sends ``first`` and pipelined pings, then waits for the server's close; the code
    the server closed with, once the TCP connection has ended."""
    async with connect(url, subprotocols=["bamboo.v1"]) as ws:  # type: ignore[list-item]
        await ws.send(first)
        for i in range(PIPELINED):
            await ws.send(json.dumps({"type": "ping", "id": i}))
        async with asyncio.timeout(ENDED_WITHIN):
            await ws.wait_closed()  # the client answers the close frame on its own
        return ws.close_code


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type": "hello"}', 4404),  # an unknown session, no create
        ('{"type": "ping", "id": 1}', 1008),  # not a hello
    ],
)
async def test_a_refused_handshake_behind_pipelined_frames_ends_with_the_close_reply(
    first: str, code: int
) -> None:
    async with run_server(close_timeout=CLOSE_TIMEOUT) as server:
        url = stream_url(server, "nobody-made-this")
        assert await closed_by_server(url, first) == code
        # The server goes on serving: a second refusal ends the same way.
        assert await closed_by_server(url, first) == code


@pytest.mark.parametrize(
    "ending",
    [
        masked_frame((1000).to_bytes(2, "big"), 8),  # the peer's close frame: 1000
        masked_frame(b"", 3),  # a reserved opcode: the server fails it, 1002
        None,  # the peer's end of stream (a TCP half-close), no close frame
    ],
    ids=["peer-close", "protocol-error", "end-of-stream"],
)
async def test_a_request_read_along_with_the_peers_ending_is_still_handled(
    ending: bytes | None,
) -> None:
    # A close the peer starts, or a frame that fails the connection, is no close the
    # server starts: a request the peer sent before it is handled as before, also
    # when both come in one read (one write here), where the server's close frame
    # went out before the frames of that read were handed on. An end of stream read
    # with the request ends the WebSocket (1006): the request is stored all the same,
    # and its ack never sent (docs/protocol.md, "Closing").
    async with run_server() as server:
        async with attach(server, "kept", create=True) as (peer, welcome):
            assert welcome["last_seq"] == 0
            event = {"type": "event", "id": 1, "event": token("sent before the end")}
            request = masked_frame(json.dumps(event).encode(), 1)
            peer.ws.transport.write(request + (ending or b""))
            if ending is None:
                peer.ws.transport.write_eof()
            await asyncio.wait_for(peer.ws.wait_closed(), ENDED_WITHIN)
            if ending is None:
                assert peer.ws.close_code == 1006  # no close frame came
        async with attach(server, "kept", last_seq=0) as (peer, welcome):
            assert welcome["last_seq"] == 1
            replayed = await peer.recv_type("event")
            assert replayed["event"] == event["event"]
