"""A close that websockets starts itself, bounded by ``--close-timeout`` like the
server's own (server/closing.py ``close_within``).

websockets closes a connection on its own where the server never sees it: the
keepalive's 1011 when a Pong does not come in time. It writes its close frame, then
waits for the socket's buffer to drain below its low-water mark, with no deadline, and
only then waits out its close timer. (A close for a frame the peer got wrong, 1002 or
1009, waits for no drain: the handler's own close then finds the deadline.) A
peer that reads slowly but steadily (a replay taken at 1 KiB/s) keeps that buffer above
the mark for minutes: its connection stayed open, holding its replay page in the
memory budget and its place among the session's connections, as long as the peer
pleased (a closed keepalive's connections lived 21 s past a close timeout of 2 s, until
their peers went).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection


class ClosingBound(ServerConnection):
    """websockets' server connection whose waits for room in the socket's buffer end at
    the close's deadline once a close is under way (``close_deadline`` set). What then
    runs out of time raises TimeoutError, which websockets takes as the connection
    failing: it drops the socket, as its close timer would have."""

    async def drain(self) -> None:
        deadline = self.close_deadline
        if deadline is None:
            await super().drain()  # an open connection: plain back-pressure
            return
        async with asyncio.timeout_at(deadline):
            await super().drain()
