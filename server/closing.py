"""Closing a WebSocket the server ends, within a deadline whatever the peer does; the
end of a replay that a close let go on, at that close's bound; and the close of a peer
that goes on past the frame rate."""

from __future__ import annotations

import asyncio

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import CloseCode

from .flush import unframe
from .http_wire import BambooConnection
from .limits import FrameLimiter
from .outbox import Outbox
from .sent_events import CLOSE
from .writer_life import FLUSH_FRAMES

log = structlog.get_logger("bamboo_session.connection")


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


def cut_replay(outbox: Outbox | None, ws: ServerConnection, codec: Codec) -> None:
    """The bound of a close that let a replay go on (``CloseRequest.replay_goes_on``:
    the session was closed or expired), ``--close-timeout`` after it, has come: the
    replay goes no further. If its writer is still at it (the peer did not take it
    all in time), the live events queued behind it are dropped (they would follow a
    gap), and what is left before the close (``closed``, a reply) is written now,
    behind the replay's frames already written, then the close frame. Both go
    without waiting for room in the socket, in this one step: the page the writer may
    be about to write then finds the connection closing, and is never written after
    them. The peer gets its events up to where the replay stopped, ``closed``, and the
    close, as when a close cut replays at once; what follows (waiting for the peer's
    close, dropping the socket past the close timeout) is ``close_within``'s."""
    closing = outbox.closing if outbox is not None else None
    if outbox is None or closing is None or not closing.replay_goes_on:
        return
    closing.replay_goes_on = False  # a replay that has not begun never will
    protocol = ws.protocol
    if not outbox.replaying or protocol.state is not State.OPEN:
        return  # sent whole already (the rest is queued as for any close), or closed
    outbox.cut_to_close()
    frames: list[bytes] = []
    while taken := outbox.take_frames(None, FLUSH_FRAMES):  # up to the close request
        frames += [out.framed(codec) for out in outbox.to_socket(taken, CLOSE)]
    if protocol.extensions:
        for data in frames:  # websockets builds (and compresses) each frame itself
            payload, text = unframe(data)
            if text:
                protocol.send_text(payload)
            else:
                protocol.send_binary(payload)
        frames = []
    protocol.send_close(closing.code, closing.reason)
    ws.transport.writelines([*frames, *protocol.data_to_send()])
    if isinstance(ws, BambooConnection):
        ws.close_frame_out()
        ws.await_close_reply()


def closed_for_rate(limiter: FrameLimiter, outbox: Outbox) -> bool:
    """Counts a frame refused over the rate; closes with 4429 (and says so) once the
    peer has ignored too many of those ``rate_limited`` errors."""
    if not limiter.refuse():
        return False
    log.info("rate limit persists, closing", refused=limiter.refused)
    outbox.close(CloseCode.TOO_SLOW, "rate limited")
    return True
