"""A close that websockets starts itself, the keepalive's 1011 for a Pong that did not
come, ends within ``--close-timeout`` like every close the server starts, even while
the socket's buffer stays full: websockets waited for that buffer to drain before it
started its close timer, so a peer that read slowly (or not at all) kept its
connection, and what it held, as long as it pleased (server/close_bound.py)."""

from __future__ import annotations

import asyncio
import time

from tests.replay_support import metric, stalled_resumer
from tests.support import attach, get, run_server, token

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


async def closed_by_keepalive_within(server: object, opened: float, bound: float) -> None:
    """Asserts that the stalled peer's connection (the one open beside the agent's)
    ended, its keepalive's 1011 counted, within ``bound`` seconds of ``opened``."""
    open_now, keepalive_closes = await connections(server)
    while open_now > 1 and time.monotonic() - opened < bound + 5:
        await asyncio.sleep(0.1)
        open_now, keepalive_closes = await connections(server)
    ended = time.monotonic() - opened
    assert open_now == 1, f"still open {ended:.1f} s after it was attached"
    assert ended < bound, f"ended {ended:.1f} s after it was attached"
    assert keepalive_closes == 1  # its keepalive closed it (counted once it ended)


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
            await closed_by_keepalive_within(server, opened, bound)
        finally:
            stalled.close()
