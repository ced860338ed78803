"""The server's keepalive and a peer uploading a large frame over a slow link: the
peer's Pong waits behind the rest of that frame, so the keepalive counts the peer's
bytes, arriving at ``MIN_LINK_RATE`` at least, as signs of life. Before, a frame
that took longer than ``--ping-interval`` + ``--ping-timeout`` to arrive was cut off
with 1011, and sent again on the next connection, and cut off again. A trickle below
that rate, never a Pong, is still closed (a peer holding a connection byte by byte)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import time
from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.server.link_progress import MIN_LINK_RATE
from tests.proxies import HttpProxy
from tests.replay_support import metric
from tests.support import Peer, attach, get, run_server, token

PING_INTERVAL = 0.5
PING_TIMEOUT = 1.0
UPLINK_RATE = 40_000  # bytes a second: the frame below takes 7 to 8 s
CONTENT = 300_000  # characters of the one event's content
# A closed loop's deadline is the keepalive's own plus this: on a loaded machine (CI beside
# other suites) the server's looks and this test's polls run late by seconds. A peer the
# keepalive never closes (the bug these tests guard) stays open for good, so the margin
# costs the test nothing of what it shows.
LOAD_ALLOWANCE = 8.0
KEEPALIVE = {
    "ping_interval": PING_INTERVAL,
    "ping_timeout": PING_TIMEOUT,
    "close_timeout": 1.0,
    "rate_limit_bytes": 0,  # the byte rate's hold is another rule of the keepalive's
    "durability": "os",
}


async def keepalive_closes(server: object) -> float:
    _, text = await get(server, "/metrics")  # type: ignore[arg-type]
    closes = 'bamboo_closes_total{code="1011"}'
    return metric(text, closes) if closes in text else 0.0


async def open_connections(server: object) -> float:
    _, text = await get(server, "/metrics")  # type: ignore[arg-type]
    return metric(text, "bamboo_connections")


async def test_a_frame_slower_to_arrive_than_the_keepalive_is_taken_whole_and_acked() -> None:
    async with run_server(**KEEPALIVE) as server:
        proxy = HttpProxy(server.port, uplink_rate=UPLINK_RATE)
        port = await proxy.start()
        url = f"ws://127.0.0.1:{port}/api/v1/stream"
        try:
            # No Pings of its own and no compression: websockets answers the server's
            # Pings, behind what it is sending.
            subprotocols: Any = ["bamboo.v1"]
            async with connect(
                url, subprotocols=subprotocols, ping_interval=None, compression=None
            ) as ws:
                peer = Peer(ws)
                await peer.send({"type": "hello", "role": "agent"})
                welcome = await peer.recv_type("welcome")
                content = secrets.token_hex(CONTENT // 2)  # random: nothing to squeeze
                started = time.monotonic()
                await peer.send({"type": "event", "id": 1, "key": "big", "event": token(content)})
                ack = await peer.recv_type("ack", timeout=30)
                took = time.monotonic() - started
                assert ack["id"] == 1 and ack["seq"] == 1, ack
                assert took > PING_INTERVAL + 2 * PING_TIMEOUT, f"crossed in {took:.1f} s"
                assert await keepalive_closes(server) == 0
                await peer.send({"type": "ping", "id": 2})
                assert (await peer.recv_type("pong"))["id"] == 2
        finally:
            await proxy.close()
        session_id = welcome["session"]["id"]
        status, page = await get(server, f"/api/v1/sessions/{session_id}/events?after_seq=0")
        assert status == 200
        events = page["events"]  # type: ignore[index]
        assert [event["seq"] for event in events] == [1]
        assert events[0]["event"]["content"] == content


async def test_a_frame_trickled_below_the_floor_without_a_pong_is_closed() -> None:
    async with run_server(**KEEPALIVE) as server, attach(server, role="agent") as (peer, _):
        transport = peer.ws.transport
        # The client reads nothing from here on, so it answers no Ping: its Pong would
        # be written into the middle of the frame below.
        transport.pause_reading()
        size = 60_000
        header = bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big") + os.urandom(4)
        transport.write(header)
        trickle_rate = 100  # bytes a second
        assert trickle_rate < MIN_LINK_RATE / 2
        opened = time.monotonic()
        bound = PING_INTERVAL + 2 * PING_TIMEOUT + 1.0 + 2.0  # a look, a close timeout
        deadline = bound + LOAD_ALLOWANCE
        while await open_connections(server) > 0 and time.monotonic() - opened < deadline:
            transport.write(os.urandom(trickle_rate // 10))
            await asyncio.sleep(0.1)
        ended = time.monotonic() - opened
        assert await open_connections(server) == 0, f"still open after {ended:.1f} s"
        assert await keepalive_closes(server) == 1


async def test_a_peer_that_sends_at_the_floor_but_reads_nothing_is_closed() -> None:
    # Its bytes come at twice the floor, but it takes none of the server's: the Pong is
    # behind nothing of its own, and what it is sent piles up unread. Before, its bytes
    # alone kept it open for as long as it pleased.
    receive_buffer = 4096  # the peer's window, full within a second of answers
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    async with run_server(**KEEPALIVE) as server:
        sock.connect(("127.0.0.1", server.port))
        subprotocols: Any = ["bamboo.v1"]
        async with connect(
            f"ws://127.0.0.1:{server.port}/api/v1/stream",
            sock=sock,
            subprotocols=subprotocols,
            ping_interval=None,
            compression=None,
            close_timeout=1,
        ) as ws:
            peer = Peer(ws)
            await peer.send({"type": "hello", "role": "agent"})
            await peer.recv_type("welcome")
            ws.transport.pause_reading()  # from here on it reads nothing, answers no Ping
            frame_id = "x" * 200  # echoed in each pong: the answers fill its window
            rate = 2 * MIN_LINK_RATE
            frame = json.dumps({"type": "ping", "id": frame_id}).encode()
            header = bytes([0x81, 0x80 | 126]) + len(frame).to_bytes(2, "big")
            opened = time.monotonic()
            bound = 1.0 + PING_INTERVAL + 2 * PING_TIMEOUT + 1.0 + 2.0  # filled, a look
            deadline = bound + LOAD_ALLOWANCE
            while await open_connections(server) > 0 and time.monotonic() - opened < deadline:
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
                ws.transport.write(header + mask + masked)
                await asyncio.sleep(len(frame) / rate)
            ended = time.monotonic() - opened
            assert await open_connections(server) == 0, f"still open after {ended:.1f} s"
            assert await keepalive_closes(server) == 1
