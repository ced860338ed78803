"""Messages still arriving on upgraded connections: :class:`ArrivingFrames`, the share of
``--memory-budget`` their bytes may hold, all connections together, and
:class:`ChargedArrivals`, the connection's side of it (http_wire.py
``BambooConnection``).

websockets parses a frame only once it is whole: until then its parser's reader keeps
what came of it, and the fragments of a message not ended yet wait for its last one.
The keepalive takes a peer's bytes at ``MIN_LINK_RATE`` for signs of life, so that a
slow uplink carrying a large frame is not taken for a dead one (link_progress.py); a
peer trickling a 1 MiB frame at that rate held it some 17 minutes, where no budget saw
it (200 such peers: 200 MiB).

Two rules bound that. A message's bytes are charged to the share while they arrive;
past it, connections of the peer (its address, an IPv6 peer's /64) holding the most of
the share are closed with 4429, its oldest message first, and their bytes dropped. Not
simply the oldest of all: a peer that started its frames after an honest slow upload
(a 1 MiB publish at 30 KB/s) and stalled them had that upload closed, for as little as
470 KB/s of bandwidth (r306). And a message must come at
``MIN_LINK_RATE`` on average from its first byte, after :data:`ARRIVAL_GRACE`: looked
at as its bytes come, so a peer that stops sending is the keepalive's to close. Only
the message's own bytes count: Pings or Pongs sent between its fragments (the
keepalive's signs of life) held a 1 MiB message charged for ever at 1 KiB/s of them.

Each fragment of a message not ended is held by websockets as a frame object until the
message ends, up to its 4,096 fragments: :data:`FRAGMENT_BYTES` each, charged with the
message's bytes. Charged by their payload alone, 300 peers' 4,095 one-byte fragments
took 216 MB of the server's memory past a share of 16 MiB, and empty ones were never
charged, nor timed: a peer answering Pings held them for ever (r381).
"""

from __future__ import annotations

import typing

from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from bamboo_session.protocol.errors import CloseCode

from .link_progress import MIN_LINK_RATE
from .quotas import creator_key
from .sliced_reads import SlicedReads

# Seconds a message may take before its average rate is looked at: a link stalls for
# some seconds in a TCP retransmission's backoff or a mobile handover, and catches up.
ARRIVAL_GRACE = 10.0
TOO_SLOW = "too slow to send: frame below 1 KiB/s"
# What the parser may hold beside a message of the largest size, which the share always
# has room for: the head of its next fragment (14 bytes at most) or a control frame
# between its fragments (the head and up to 125 bytes), split across reads.
FRAME_SLACK = 14 + 125
# What websockets holds for each fragment of a message until its end, beside its
# payload: the frame object, its bytes object's header and the list's slot. Measured
# 137 to 153 bytes with tracemalloc, 176 in the process's RSS (300 peers' 4,095
# fragments each took 216 MB).
FRAGMENT_BYTES = 176
# What the share always has room for beside a message of the largest size: the next
# head (FRAME_SLACK) and as many fragments as websockets lets a message have.
MESSAGE_SLACK = FRAME_SLACK + MAX_FRAGMENTS * FRAGMENT_BYTES
SHARE_FULL = "too slow to send: frames arriving hold their memory share"


class Arrival(typing.Protocol):
    @property
    def arrival_peer(self) -> str | None:
        """Whose messages these are: quotas.creator_key of the peer's address."""

    def drop_arrival(self) -> None:
        """Close the connection, giving back its charge at once (:meth:`give_back`)."""


class ArrivingFrames:
    """Bytes of messages still arriving, against a limit, who holds them, the longest
    holding first (each message counts from its first byte), and how much each peer
    holds."""

    __slots__ = ("_by_peer", "_holders", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._holders: dict[Arrival, None] = {}  # those with a charge, oldest first
        self._by_peer: dict[str | None, int] = {}  # bytes charged, by arrival_peer

    def take(self, holder: Arrival, size: int) -> bool:
        """Charge ``size`` more bytes to ``holder``, dropping other holders while that
        would go past the limit (:meth:`_victim`); False (nothing charged) if even that
        cannot make room."""
        while self.used + size > self.limit:
            victim = self._victim(holder)
            if victim is None:
                return False
            victim.drop_arrival()
        self._count(holder, size)
        self._holders.setdefault(holder, None)
        return True

    def _victim(self, holder: Arrival) -> Arrival | None:
        """The oldest holder, ``holder`` aside, of the peer holding the most: a scan,
        only when the share is full."""
        others = [other for other in self._holders if other is not holder]
        if not others:
            return None
        most = max(self._by_peer[other.arrival_peer] for other in others)
        return next(other for other in others if self._by_peer[other.arrival_peer] == most)

    def shrink(self, holder: Arrival, size: int) -> None:
        """``holder``'s charge is ``size`` bytes less, and is not all given back."""
        self._count(holder, -size)

    def give_back(self, holder: Arrival, size: int) -> None:
        """``holder``'s whole charge, ``size`` bytes, is given back."""
        self._count(holder, -size)
        del self._holders[holder]

    def _count(self, holder: Arrival, size: int) -> None:
        self.used += size
        peer = holder.arrival_peer
        left = self._by_peer.get(peer, 0) + size
        if left:
            self._by_peer[peer] = left
        else:
            del self._by_peer[peer]


class ChargedArrivals(SlicedReads):
    """A connection whose message still arriving, after each slice parsed, is charged to
    ``arrivals`` and held to its average rate. A frame whole in its read leaves nothing
    to charge: the look costs three tests."""

    arrivals: ArrivingFrames | None = None
    _arrival_peer: str | bool | None = False  # False: not looked up yet
    _arriving = 0  # bytes charged for the message arriving; 0: none is
    _arriving_since = 0.0  # loop time its first byte was parsed
    _arriving_held = 0.0  # reading_held_seconds() by then
    _consumed = 0  # bytes the parser had taken whole (frames, heads) at the last look
    # Fragments of the message arriving parsed so far, each held till its end: counted
    # by http_wire.py's process_event, in the test it makes of every frame anyway.
    _fragments = 0

    def count_fragment(self, frame: Frame) -> None:
        """``frame`` parsed: a fragment of a message not ended, or that message's last."""
        if not frame.fin:
            self._fragments += 1
        elif self._fragments and frame.opcode is Opcode.CONT:
            self._fragments = 0  # its last fragment: the message is whole

    def _parse_sliced(self, data: bytes) -> None:
        self._parse_slices(data)
        protocol = self.protocol
        if self._arriving or protocol.reader.buffer or protocol.current_size is not None:
            self._look_at_arrival()

    def _look_at_arrival(self) -> None:
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            # Closing: what comes is dropped unparsed or waits for the close reply,
            # within the close timeout.
            self._release_arrival()
            return
        buffered = len(protocol.reader.buffer)
        payload = buffered + (protocol.current_size or 0)
        size = payload + self._fragments * FRAGMENT_BYTES
        # Bytes fed to the parser that it no longer holds: unchanged while the same
        # frame grows; a frame completed or a new head read changes it.
        consumed = self.bytes_read - len(self._held) - buffered
        moved_on, self._consumed = consumed != self._consumed, consumed
        if moved_on and protocol.current_size is None:
            self._release_arrival()  # a new message: it counts from now, last in line
        if size == 0:
            self._release_arrival()
            return
        now = self.loop.time()
        if not self._arriving:
            self._arriving_since = now
            self._arriving_held = self.reading_held_seconds()
        elif self._below_rate(now, payload + len(self._held)):
            self._fail_arrival(TOO_SLOW)
            return
        self._charge_arrival(size)

    def _below_rate(self, now: float, arrived: int) -> bool:
        """Whether the message, ``arrived`` bytes of it so far (read and held for the
        byte rate included), came slower than ``MIN_LINK_RATE`` since its first byte,
        once past the grace; the time the server held its reading back, for the byte
        rate or for its handler to take the frames queued, not counted: the peer's
        bytes wait in the socket meanwhile (a handler held by a stalled store had its
        peer closed for the store's slowness, r306)."""
        elapsed = now - self._arriving_since - ARRIVAL_GRACE
        if arrived >= MIN_LINK_RATE * elapsed:
            return False
        elapsed -= self.reading_held_seconds() - self._arriving_held
        return arrived < MIN_LINK_RATE * elapsed

    def _charge_arrival(self, size: int) -> None:
        arrivals, held = self.arrivals, self._arriving
        if arrivals is not None:
            if size < held:
                arrivals.shrink(self, held - size)
            elif not arrivals.take(self, size - held):
                self._fail_arrival(SHARE_FULL)  # alone, it is over the share
                return
        self._arriving = size

    def _release_arrival(self) -> None:
        held, self._arriving = self._arriving, 0
        if held and self.arrivals is not None:
            self.arrivals.give_back(self, held)

    @property
    def arrival_peer(self) -> str | None:
        """The peer's address as the share counts peers (an IPv6 peer's /64), looked up
        once, at its first message that spans reads."""
        peer = self._arrival_peer
        if peer is False:
            address = self.transport.get_extra_info("peername")
            peer = self._arrival_peer = creator_key(None, address[0] if address else None)
        return peer  # type: ignore[return-value]

    def drop_arrival(self) -> None:
        """Closed to make room in the share (ArrivingFrames.take): its peer holds the
        most of it, and its message has been arriving longest of that peer's."""
        self._fail_arrival(SHARE_FULL)

    def _fail_arrival(self, reason: str) -> None:
        """Closes with 4429, as websockets closes for a frame it refuses (1009): the
        parser drops what it holds at once, and what follows up to the close reply."""
        self._release_arrival()
        protocol = self.protocol
        if protocol.state is not State.OPEN:
            return
        protocol.fail(CloseCode.TOO_SLOW, reason)
        self.send_data()
        if self.close_timeout is None:
            return
        if self.close_deadline is None:
            self.close_deadline = self.loop.time() + self.close_timeout
        # Nothing else awaits that deadline: the handler waits for the rest of a message
        # that the parser now discards, so a peer that never answered the close kept its
        # connection, and the fragments it had sent, until the keepalive's next Ping (for
        # ever with none). A connection ended by then is not aborted again.
        self.loop.call_at(self.close_deadline, self.transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self._release_arrival()
