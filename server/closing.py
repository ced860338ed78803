"""Closing a WebSocket the server ends, within a deadline whatever the peer does."""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection


async def close_within(ws: ServerConnection, code: int, reason: str, grace: float) -> None:
    """Closes ``ws`` with ``code``, the socket dropped once ``grace`` has passed
    (``--close-timeout``) however far the closing handshake got. websockets starts its
    own close timer only once the close frame is in the socket's buffer, and waits for
    room there without a deadline: a peer that reads nothing (the one a 4429 closes as
    too slow) would keep its connection, and what was written to it, until the
    keepalive's next Ping (whose send finds the close overdue), or for good with the
    keepalive off."""
    try:
        async with asyncio.timeout(grace):
            await ws.close(code, reason)
    except TimeoutError:
        ws.transport.abort()
        await ws.wait_closed()
