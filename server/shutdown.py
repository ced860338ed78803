"""What a stopping server owes the connections still open: each peer's last bytes
(``closed`` and the close frame, an HTTP answer under way) in the peer's hands, and
nothing after that.

The peers' half of the closing handshake is not waited for. Reading it, and tearing
every connection down one by one, cost a restart with 6,000 connections 0.65 s of CPU
after the last close frame was written, while the peers, who already had their close
code, waited for the new server. From the stop's start, what peers send is read and
dropped unseen; once nothing is owed, the sockets are closed (by the process's exit,
or by ``drop_connections``). A stop still under way at its grace (the park or the
store's close waiting on a store that hangs, or on another process's lock) ends our
stream (FIN) right behind each close frame from then on (``end_streams``), so that a
peer sees its connection end with its close whatever the stop waits on: websockets
clients and browsers report a close only as the connection ends. Not sooner: a peer
whose connection ends at once tries to reconnect while the server is still stopping,
is refused, and backs off (a restart's 5,000 viewers were back 1.14x later, r469).

"In the peer's hands" means out of the kernel's send queue too, not only out of the
transport's buffer: a socket closed while the peer still sends is reset, and a reset
throws away what its send queue held. A peer that has ended its stream is owed
nothing more than what its connection already holds (BambooConnection.eof_received):
one that hung up has its socket reset by the next bytes written to it, which then stay
unacknowledged, and nothing reads the socket any more to see the reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import struct
import termios
import time
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from websockets.protocol import State

from bamboo_session.protocol.errors import CloseCode

if TYPE_CHECKING:  # (http_wire.py calls end_after_close)
    from .http_wire import BambooConnection

FIRST_POLL_SECONDS = 0.005
LAST_POLL_SECONDS = 0.05
# Linux's SIOCOUTQ: the bytes of a TCP socket's send queue the peer has not acknowledged.
_SEND_QUEUE_IOCTL: int | None = getattr(termios, "TIOCOUTQ", None)


def close_unattached(
    connections: Collection[BambooConnection], reason: str
) -> list[asyncio.Task[None]]:
    """Closes with 1012 every open WebSocket attached to no session (its ``hello`` not
    yet read or answered); the attached ones close themselves, after their queued
    frames and ``closed``. The closing tasks, for the caller to hold."""
    return [
        asyncio.ensure_future(connection.close(CloseCode.SERVICE_RESTART, reason))
        for connection in connections
        if connection.protocol.state is State.OPEN and not connection.closes_itself
    ]


def end_streams(connections: Collection[BambooConnection]) -> None:
    """The stop is past its grace: each connection's stream ends behind its close
    frame, at once where that is out already."""
    for connection in list(connections):
        connection.end_with_close()


def end_after_close(transport: asyncio.Transport) -> None:
    """Ends our stream (FIN) behind a stopping server's close frame, once the transport
    has written what it holds. A client reports its close only when the connection
    ends (websockets', a browser's), and the server does not read its close reply:
    left to the process's exit, the end came only after the park and the store's close
    (3 s more on an SQLite file another process keeps locked). Its socket stays open,
    its input read and dropped, so nothing unread makes its close a reset; the peer
    hangs up in turn (eof_received), or the exit closes it once its bytes arrived."""
    if transport.is_closing() or not transport.can_write_eof():
        return
    with contextlib.suppress(OSError):  # reset by the peer already: nothing left to end
        transport.write_eof()


def owes_bytes(connection: BambooConnection) -> bool:
    """Whether the peer of ``connection`` has yet to receive something: bytes in the
    transport's buffer or the kernel's send queue, its close frame (an open
    WebSocket), or the answer to a request it sent (a handshake under way). One that
    sent no request yet is owed nothing: the server stopped accepting."""
    transport = connection.transport
    if transport.get_write_buffer_size() > 0:
        return True
    if transport.is_closing():
        return False  # its socket is the kernel's to finish
    protocol = connection.protocol
    if protocol.state is State.OPEN:
        return True
    # A request read and not yet answered. Once answered (a refusal, an API read),
    # only its bytes are owed, not websockets' wait for the peer to hang up.
    answering = connection.request is not None and not protocol.eof_sent
    if protocol.state is State.CONNECTING and answering:
        return True
    return unacknowledged_bytes(connection) > 0


def unacknowledged_bytes(connection: BambooConnection) -> int:
    """What the kernel holds of the socket's output, unsent or unacknowledged (0 where
    the platform does not tell)."""
    sock = connection.transport.get_extra_info("socket")
    if sock is None or _SEND_QUEUE_IOCTL is None:
        return 0
    try:
        answer = fcntl.ioctl(sock.fileno(), _SEND_QUEUE_IOCTL, b"\0\0\0\0")
    except OSError:
        return 0
    count: int = struct.unpack("i", answer)[0]
    return count


async def bytes_delivered(connections: Collection[BambooConnection], limit: float) -> int:
    """Waits up to ``limit`` seconds until no peer is owed a byte; the count of those
    still owed then (peers that stopped reading)."""
    deadline = time.monotonic() + limit
    owed = [c for c in connections if owes_bytes(c)]
    pause = FIRST_POLL_SECONDS
    while owed and time.monotonic() < deadline:
        await asyncio.sleep(pause)
        pause = min(pause * 2, LAST_POLL_SECONDS)  # slow peers are not polled hard
        owed = [c for c in owed if owes_bytes(c)]
    return len(owed)


@contextlib.contextmanager
def peers_closing(connections: Collection[BambooConnection], grace: float) -> Iterator[None]:
    """A stop's hold on its peers: what any of them sends is dropped unread from the
    start (BambooConnection.discard_input); at ``grace``, still within, their streams
    end behind their close frames (``end_streams``); no later, however the stop ends."""
    for connection in connections:
        connection.discard_input()
    past_grace = asyncio.get_running_loop().call_later(grace, end_streams, connections)
    try:
        yield
    finally:
        past_grace.cancel()


def drop_connections(connections: Collection[BambooConnection]) -> None:
    """Closes every socket now, as the process's exit would."""
    for connection in list(connections):
        connection.transport.abort()
