"""A close that websockets starts itself, or that the peer starts, bounded by
``--close-timeout`` like the server's own (server/closing.py ``close_within``).

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

A peer's close frame is echoed at once, and the server's end of stream follows it; the
peer is then to hang up. websockets sets its close deadline there, but only a send or a
close of the handler's waits for it, and a handler waiting in ``recv()`` (for a
``hello``, or for the next frame) is woken only by the socket's end: a peer that closed
before its ``hello`` and kept its socket open held its connection until the hello
timeout (10 s), an attached one until the keepalive's next Ping. So that deadline ends
the socket itself (``_bound_peer_close``, called by the reading side, sliced_reads.py,
which is built on this class: no data_received of its own, which every read would go
through).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection


class ClosingBound(ServerConnection):
    """websockets' server connection whose waits for room in the socket's buffer end at
    the close's deadline once a close is under way (``close_deadline`` set). What then
    runs out of time raises TimeoutError, which websockets takes as the connection
    failing: it drops the socket, as its close timer would have. A close the peer
    started drops the socket at that deadline too, whatever the handler awaits."""

    _peer_close_bound: asyncio.TimerHandle | None = None

    async def drain(self) -> None:
        deadline = self.close_deadline
        if deadline is None:
            await super().drain()  # an open connection: plain back-pressure
            return
        async with asyncio.timeout_at(deadline):
            await super().drain()

    def _bound_peer_close(self) -> None:
        """The peer's close frame is read (and answered): the socket is dropped at the
        close deadline websockets set then, unless the peer hangs up first. Called
        after each slice websockets parsed once it holds that frame (sliced_reads.py)."""
        if self._peer_close_bound is not None:
            return
        deadline = self.close_deadline
        if deadline is not None and not self.transport.is_closing():
            self._peer_close_bound = self.loop.call_at(deadline, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            # Not kept (with the connection it holds) till the deadline once ended.
            if self._peer_close_bound is not None:
                self._peer_close_bound.cancel()
