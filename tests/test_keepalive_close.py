"""A close that websockets starts itself, the keepalive's 1011 for a Pong that did not
come, ends within ``--close-timeout`` like every close the server starts, even while
the socket's buffer stays full: websockets waited for that buffer to drain before it
started its close timer, so a peer that read slowly (or not at all) kept its
connection, and what it held, as long as it pleased (server/close_bound.py). Nor does
the Ping wait for room in that buffer before its Pong's timer starts: a peer that
filled it before the Ping, then read nothing, was never closed (sliced_reads.py)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.replay_support import metric, stalled_resumer
from tests.support import attach, get, run_server, token
from tests.test_wire_floods import masked_frame

PING_INTERVAL = 0.5
# Long enough for the publisher to fill the stalled peer's socket buffers (several MiB
# in the kernel, then the transport's) before the Pong is overdue.
PING_TIMEOUT = 3.0
CLOSE_TIMEOUT = 1.0
EVENTS = 110
PAYLOAD = "k" * 60_000  # 110 of them: 6.6 MB, past the kernel's 4 MiB, under 8 MiB queued


async def connections(server: object) -> tuple[float, float]:
    """The open WebSocket connections and the keepalive closes, from /metrics."""
    _, text = await get(server, "/metrics")  # type: ignore[arg-type]
    closes = 'bamboo_closes_total{code="1011"}'
    return metric(text, "bamboo_connections"), metric(text, closes) if closes in text else 0.0


async def test_a_keepalive_close_behind_a_full_socket_buffer_ends_within_the_close_timeout() -> (
    None
):
    config = {
        "ping_interval": PING_INTERVAL,
        "ping_timeout": PING_TIMEOUT,
        "close_timeout": CLOSE_TIMEOUT,
        "rate_limit_bytes": 0,
        "durability": "os",
    }
    async with run_server(**config) as server, attach(server, role="agent") as (agent, welcome):
        session_id = welcome["session"]["id"]
        # Attached with nothing to replay; it never reads, so it never answers a Ping.
        stalled = await asyncio.to_thread(stalled_resumer, server.port, session_id, 0)
        opened = time.monotonic()
        try:
            # Its first Ping goes out into an empty buffer, which starts the Pong's
            # timer; the events then fill the buffer before the timer runs out.
            await asyncio.sleep(PING_INTERVAL + 0.2)
            for first in range(0, EVENTS, 10):
                for i in range(first, first + 10):
                    await agent.send({"type": "event", "id": i, "event": token(PAYLOAD)})
                for _ in range(10):
                    await agent.recv_type("ack")
            bound = PING_INTERVAL + PING_TIMEOUT + CLOSE_TIMEOUT + 1.5
            open_now, keepalive_closes = await connections(server)
            while open_now > 1 and time.monotonic() - opened < bound + 5:
                await asyncio.sleep(0.1)
                open_now, keepalive_closes = await connections(server)
            ended = time.monotonic() - opened
            assert open_now == 1, f"still open {ended:.1f} s after it was attached"
            assert ended < bound, f"ended {ended:.1f} s after it was attached"
            assert keepalive_closes == 1  # its keepalive closed it (counted once it ended)
        finally:
            stalled.close()


async def test_a_peer_that_filled_its_buffer_before_the_ping_and_reads_nothing_is_closed() -> None:
    # The peer asks for pages that fill the socket's buffers (the kernel's, then past
    # --write-limit in the transport's) before the keepalive's first Ping, then reads
    # nothing and sends nothing. The Ping waited for room in that buffer before its
    # Pong's timer started: in a quiet session the connection stayed for as long as
    # the peer pleased (40 s and more of a 2 s / 1 s keepalive), a few MB held.
    ping_interval, write_limit = 2.0, 256 * 1024
    config = {
        "ping_interval": ping_interval,
        "ping_timeout": 1.0,
        "close_timeout": CLOSE_TIMEOUT,
        "rate_limit_bytes": 0,
        "write_limit": write_limit,
        "durability": "os",
    }
    async with run_server(**config) as server, attach(server, role="agent") as (agent, welcome):
        session_id = welcome["session"]["id"]
        for i in range(40):
            await agent.send({"type": "event", "id": i, "event": token(f"{i}:" + "e" * 60_000)})
        for _ in range(40):
            await agent.recv_type("ack", timeout=30)
        stalled = await asyncio.to_thread(stalled_resumer, server.port, session_id, 40)
        opened = time.monotonic()
        try:
            # Seven pages of about 1 MiB: 7 MiB, past the kernel's 4 MiB, under the
            # send queue's 8 MiB (no 4429 for it).
            requests = (
                json.dumps({"type": "events", "id": k, "after_seq": 0, "limit": 1000}).encode()
                for k in range(7)
            )
            stalled.sendall(b"".join(masked_frame(request, 1) for request in requests))
            held = 0
            while held <= write_limit and time.monotonic() - opened < ping_interval / 2:
                await asyncio.sleep(0.05)
                held = max(unsent(server, agent), default=0)
            assert held > write_limit, "the buffer did not fill before the Ping"
            bound = ping_interval + 1.0 + CLOSE_TIMEOUT + 2.0
            open_now, keepalive_closes = await connections(server)
            while open_now > 1 and time.monotonic() - opened < bound + 5:
                await asyncio.sleep(0.2)
                open_now, keepalive_closes = await connections(server)
            ended = time.monotonic() - opened
            assert open_now == 1, f"still open {ended:.1f} s after it was attached"
            assert ended < bound, f"ended {ended:.1f} s after it was attached"
            assert keepalive_closes == 1
        finally:
            stalled.close()


def unsent(server: Any, agent: Any) -> list[int]:
    """What waits in the transport's buffer of each connection but ``agent``'s."""
    return [
        connection.transport.get_write_buffer_size()
        for connection in server._open_connections
        if connection.transport.get_extra_info("peername")
        != agent.ws.transport.get_extra_info("sockname")
    ]
