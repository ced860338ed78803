"""Sent bytes: whether the peer is taking what the client sends, the keepalive's sign of
life while its Ping waits behind our own bytes (:mod:`.keepalive`).

A publish of 1 MiB over a 30 KB/s uplink takes 35 s to cross; the Ping sent after it
crosses after it, and the server, reading the frame meanwhile, sends nothing. What
does move is our side of the socket: the bytes written that the peer has acknowledged
(``written``, less what still waits in websockets' write buffer, less the kernel's
send queue) grow while the link works, and stop growing on a dead one.

The kernel's send queue (its bytes unsent or not yet acknowledged) is read with the
``TIOCOUTQ`` ioctl where the platform has it (Linux). Where it does not (macOS and
Windows, or a socket that refuses the ioctl), only websockets' buffer is seen, and the
kernel's send buffer may hold our bytes unseen: the fallback then allows every Ping's
wait ``min(bytes handed to the kernel since the previous Ping, SO_SNDBUF)`` at
``FALLBACK_UPLINK_RATE`` more, the time the kernel could take to send them on a
slow but working uplink (a dead link is so found that much later, 16 s at most per
256 KiB of send buffer: 256 s once Linux has grown it to 4 MiB).

Only bytes ahead of the keepalive's Ping are news (``moved(up_to)``): those written
after it are taken by a peer's kernel while its process hangs just as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Final, Protocol

try:
    import fcntl
    import termios

    TIOCOUTQ: int | None = termios.TIOCOUTQ
except ImportError:  # Windows: no fcntl
    TIOCOUTQ = None

# Bytes a second the fallback counts on the kernel's send buffer draining at, at least.
FALLBACK_UPLINK_RATE: Final = 16 * 1024


class Writer(Protocol):
    """A connection that counts the bytes it hands its transport (keepalive.py
    ``HeardConnection``)."""

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def written(self) -> int: ...


def kernel_unsent(sock: socket.socket | None) -> int | None:
    """Bytes written to ``sock`` not yet acknowledged by its peer, as the kernel counts
    them (TIOCOUTQ); ``None`` where the platform or the socket does not say."""
    if TIOCOUTQ is None or sock is None:
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):  # not supported for sockets here, or closed
        return None
    unsent: int = struct.unpack("i", raw)[0]
    return unsent


class SentBytes:
    """Looks at how much of what a connection wrote its peer has taken: ``moved()``
    says whether that grew since the previous look."""

    def __init__(self, ws: Writer) -> None:
        self._ws = ws
        self._socket: socket.socket | None = ws.transport.get_extra_info("socket")
        self._kernel_counts = kernel_unsent(self._socket) is not None
        self._taken = self._now_taken()
        self._handed_at_ping = self._handed()

    def _handed(self) -> int:
        """Bytes handed to the kernel so far: written, less websockets' buffer."""
        return self._ws.written - self._ws.transport.get_write_buffer_size()

    def _now_taken(self) -> int:
        handed = self._handed()
        if not self._kernel_counts:
            return handed  # the fallback: only websockets' buffer falling is seen
        return handed - (kernel_unsent(self._socket) or 0)

    def moved(self, up_to: int | None) -> bool:
        """Whether the peer took bytes of ours since the previous look, counting only
        those of the first ``up_to`` written (all, if ``None``)."""
        taken, was = self._now_taken(), self._taken
        if up_to is not None:
            taken = min(taken, up_to)
        self._taken = taken
        return taken > was

    def allowance(self) -> float:
        """Seconds more a Ping's wait allows (the fallback's; 0 where the kernel says
        what it holds), for the bytes handed to the kernel since the previous call."""
        handed, was = self._handed(), self._handed_at_ping
        self._handed_at_ping = handed
        if self._kernel_counts or handed <= was:
            return 0.0
        buffer = 0
        if self._socket is not None:
            with contextlib.suppress(OSError):
                buffer = self._socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        return min(handed - was, buffer) / FALLBACK_UPLINK_RATE
