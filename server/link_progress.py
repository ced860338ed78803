"""What the keepalive (sliced_reads.py) takes for a peer's signs of life while it waits
for a Pong: :class:`LinkProgress`, the bytes the peer sends, and the bytes of the
server's output the peer's TCP acknowledges, each counted only at
:data:`MIN_LINK_RATE` or more, and the latter only until the Ping itself is through
(its own way through counted too: the Pong has a whole ``ping_timeout`` from the look
that finds it through, if what lay ahead of it went at that rate).

The Pong is late, on a working link, only for what lies ahead of one of its two legs:
the rest of a large frame the peer is uploading (its Pong goes out behind it), or what
the server wrote to a slow reader before the Ping (a replay in the kernel's send
queue: megabytes on Linux, minutes at 30 KB/s). Neither is a Pong's fault, and both
used to end in a 1011, the client resuming the same frame or backlog on its next
connection.

Before the Ping is written at all, websockets' ``ping()`` waits for room in the
connection's buffer: :class:`OutputStall` tells, over :func:`stall_window`, a peer
whose TCP takes nothing of that buffer from one that takes it slowly.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol

from .replay import kernel_queue

# Bytes a second either leg must keep to count as alive while the keepalive waits for
# its Pong: a trickle below it, with no Pong, is closed as before (1011), so that a
# peer sending a byte now and then, or reading one, holds no connection for ever.
# 1 KiB/s is below any working link (GPRS carries several).
MIN_LINK_RATE = 1024
# The server's Ping: two bytes of header (unmasked) and websockets' four random bytes.
PING_FRAME_BYTES = 6
# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64, since Linux 4.1.
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
_TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)
# Seconds at least over which a peer whose output waits (the Ping waiting for room in
# the buffer) must have its TCP acknowledge some of it, or send something, to be kept.
# A reader's TCP acknowledges in bursts, as its receive window reopens: Linux offers no
# window until a segment's worth, or a sixteenth of the buffer, is free. Over loopback
# (an MSS of 64 KiB) with default buffers, a raw peer reading 1 KiB/s had its TCP
# acknowledge 65 KiB after 64 s, then 93 KiB after 126 s (129 KiB read in between);
# its reads themselves may come a minute apart. Five minutes is over twice the longest
# gap; a peer that reads nothing holds its backlog that long, not for ever.
STALL_WINDOW = 300.0


class ReadCount(Protocol):
    """What counts the bytes read from the peer (the connection: sliced_reads.py)."""

    bytes_read: int


def bytes_acked(sock: socket.socket | None) -> int | None:
    """What the peer's TCP has acknowledged of the socket's output (the SYN counted
    too), or None where the kernel does not tell."""
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    acked: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return acked


class LinkProgress:
    """One wait for a Pong: ``alive()`` at each of its looks says whether the peer's
    bytes came, or the server's went, at :data:`MIN_LINK_RATE` since the previous
    look. Made right before the Ping is written, so that it knows where the Ping ends
    in the connection's output."""

    __slots__ = ("_acked", "_fd", "_ping_end", "_read", "_reader", "_since", "_sock", "_transport")

    def __init__(self, transport: asyncio.WriteTransport, reader: ReadCount) -> None:
        self._transport, self._reader = transport, reader
        self._sock: socket.socket | None = transport.get_extra_info("socket")
        self._fd = self._sock.fileno() if self._sock is not None else -1
        self._acked = bytes_acked(self._sock)
        # Where the Ping will end in the connection's output, counted as acked bytes.
        self._ping_end: int | None = None
        if self._acked is not None:
            self._ping_end = self._acked + self._owed() + PING_FRAME_BYTES
        self._read = reader.bytes_read
        self._since = asyncio.get_running_loop().time()

    def alive(self, now: float) -> bool:
        """Whether the link showed life since the previous look (and the look moves on
        when it did: the next one asks the same of the time after it)."""
        floor = MIN_LINK_RATE * (now - self._since)
        acked = bytes_acked(self._sock)
        took = 0 if acked is None or self._acked is None else acked - self._acked
        # The Ping waits behind what the server wrote before it, taken steadily: what
        # of that went since the previous look counts, the Ping's own way through
        # included. Counted only while the Ping was still behind at the look, a Ping
        # through just before it left its Pong the rest of that time: a slow
        # reader's link, 0.25 s of bytes held between the peer's TCP and the peer,
        # was closed 1011 with the whole replay through and the Pong on its way
        # (tests/test_keepalive_slow_download.py, 6 runs in 16 under load).
        ahead = self._taken_ahead_of_ping(acked)
        downlink = ahead > 0 and ahead >= floor
        # The Pong waits behind what the peer sends, but only from a peer that takes
        # what it is sent: one that reads nothing holds the server's output unread.
        reading = took > 0 or self._owed() == 0
        uplink = self._reader.bytes_read - self._read >= floor and reading
        if downlink or uplink:
            self._acked, self._read, self._since = acked, self._reader.bytes_read, now
            return True
        return False

    def _taken_ahead_of_ping(self, acked: int | None) -> int:
        """The bytes of the output up to the Ping's end that the peer's TCP acknowledged
        since the previous look (``acked`` now): none once the Ping was through then."""
        if acked is None or self._acked is None or self._ping_end is None:
            return 0
        return min(acked, self._ping_end) - self._acked

    def _owed(self) -> int:
        """The server's output not yet acknowledged: in the transport's buffer, and in
        the kernel's send queue."""
        return self._transport.get_write_buffer_size() + kernel_queue(self._fd)


def stall_window(ping_interval: float, ping_timeout: float) -> float:
    """Seconds a waiting Ping gives a peer to take some of the output, or send."""
    return max(ping_interval + ping_timeout, STALL_WINDOW)


class OutputStall:
    """One wait of the Ping for room in the connection's buffer: ``stalled()`` at each
    of its looks says whether, since the previous one, the peer's TCP acknowledged
    nothing of the server's output and the peer sent nothing. (The server reads
    nothing while that buffer is full, http_wire.py ``pause_writing``: it is the
    acknowledgements that keep a reader.) None from ``watch`` where the kernel does
    not tell what the peer acknowledged: nothing is judged."""

    __slots__ = ("_acked", "_read", "_reader", "_sock")

    def __init__(self, sock: socket.socket, acked: int, reader: ReadCount) -> None:
        self._sock, self._acked = sock, acked
        self._reader, self._read = reader, reader.bytes_read

    @classmethod
    def watch(cls, transport: asyncio.BaseTransport, reader: ReadCount) -> OutputStall | None:
        sock: socket.socket | None = transport.get_extra_info("socket")
        acked = bytes_acked(sock)
        return None if sock is None or acked is None else cls(sock, acked, reader)

    def stalled(self) -> bool:
        """Whether nothing moved either way since the previous look (and the look moves
        on: the next one asks the same of the time after it)."""
        acked, read = bytes_acked(self._sock), self._reader.bytes_read
        if acked is None:
            return False  # the socket is gone: its connection ends on its own
        moved = acked != self._acked or read != self._read
        self._acked, self._read = acked, read
        return not moved
