"""Reading a WebSocket's socket once upgraded: :class:`SlicedReads`, the part of the
server's connection (http_wire.py ``BambooConnection``) that hands what it reads to
websockets' parser a slice at a time, and holds the rest, reading paused, while the
connection's byte rate is in debt (limits.py) or websockets' incoming queue is full:
over ``--max-queue`` frames, or holding ``--max-queue-bytes`` of them.

What the parser is handed is parsed at once, every frame in it inflated (with
permessage-deflate) and queued for the handler: the slices bound what one read can
put in memory before the handler takes a frame.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from typing import NoReturn

from websockets.asyncio.connection import Connection
from websockets.asyncio.messages import Assembler
from websockets.frames import CloseCode, Frame

from .close_bound import ClosingBound
from .limits import ByteRate
from .link_progress import LinkProgress, OutputStall, stall_window
from .read_waits import ReadWaits

# What the parser is handed at once, after the upgrade: a read of tiny frames (up to
# 256 KiB of them) is parsed in slices, the meter and websockets' incoming queue looked
# at between them, so that one read costs at most a slice's worth of parsing before a
# peer in debt, or whose queue is full, stops being read.
PARSE_SLICE = 4096
# With permessage-deflate a slice inflates up to about 1,000 times (1 MiB frames of
# 1 KiB each): 4 KiB held 4 frames of 1 MiB, parsed at once past --max-queue and the
# byte rate's burst (8 MiB queued per connection, 900 MB for 100 peers on a server
# slow to decode them). 1 KiB holds at most about one such frame.
DEFLATE_PARSE_SLICE = 1024
# websockets' own data_received, which parses a slice, sends what the protocol owes and
# hands on each event (the connection's process_event), called by name: every read
# comes here, and super() costs a super object and a walk of the bases (some 1,200
# machine instructions) each time. No class of the connection (http_wire.py
# ``BambooConnection``) between this one and websockets' overrides it: the peer's close
# is bounded here, after it (close_bound.py). tests/test_connection_by_name_calls.py
# fails if one does.
_websockets_data_received = Connection.data_received


class SlicedReads(ClosingBound):
    """websockets' server connection, read in slices (``_parse_slices``), each frame
    charged to ``_meter`` by the connection (``_debt``)."""

    _meter: ByteRate | None = None  # the connection's byte rate, None: no limit
    read_waits: ReadWaits  # for the byte rate's debt
    _discarding = False  # a stopping server: what the peer sends is dropped unread
    _close_sent = False  # our close frame is out: only the peer's close reply matters
    _debt = 0.0  # seconds until the byte rate is repaid, after the last frame
    _held = b""  # read while in debt or the queue full, not parsed yet
    _repaid: asyncio.TimerHandle | None = None  # set while reading waits for the debt
    _queue_held = False  # reading waits for room in websockets' incoming queue
    # Seconds reading waited for room in that queue, the wait under way aside, and the
    # loop time that wait began (None: none is under way): the server's own slowness.
    _queue_waited = 0.0
    _queue_wait_since: float | None = None
    _unheld: asyncio.Handle | None = None  # set while what it held waits to be parsed
    # Bytes of the frames in websockets' incoming queue: each one's size as queued,
    # oldest first, and their sum. None: no bound but the count (--max-queue). A list,
    # not a deque: it holds a few sizes at most (--max-queue and one more, less if
    # they are big), and an empty list is 56 bytes where a deque is 760, on every idle
    # connection (0.07 of the relay's whole connection).
    max_queue_bytes: int | None = None
    _queued_sizes: list[int]
    _queued_bytes = 0
    bytes_read = 0  # from the socket since the upgrade: the keepalive's sign of life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._queued_sizes = []
        # The queue's hooks are bound methods of the connection, not closures: a
        # closure's function, its cells and what they held were some 900 bytes on every
        # idle connection (h383). websockets calls put for data frames only, as
        # process_event queues them: counting there tests no event's type per frame.
        assembler = self.recv_messages
        assembler.put = self._frame_put  # type: ignore[method-assign]
        assembler.pause = self._paused_for_count
        assembler.maybe_resume = self._frame_handed  # type: ignore[method-assign]

    def _frame_put(self, frame: Frame) -> None:
        # websockets' own put raises, and nothing is counted, once the queue is closed.
        Assembler.put(self.recv_messages, frame)
        size = len(frame.data)
        self._queued_sizes.append(size)
        self._queued_bytes += size

    def _frame_handed(self) -> None:
        """websockets calls it (as its ``maybe_resume``) as the handler takes a frame."""
        assembler = self.recv_messages
        frames = assembler.frames.queue  # SimpleQueue's deque: no __len__ call
        bound = self.max_queue_bytes
        if not assembler.paused and (bound is None or self._queued_bytes < bound):
            # Far from both bounds (most frames): nothing was full, so nothing is to
            # resume, and websockets' maybe_resume does nothing unpaused.
            self._frame_taken(frames)
            return
        was_full = self._queue_full()
        self._frame_taken(frames)
        Assembler.maybe_resume(assembler)
        if was_full and not self._queue_full():
            self._resume_reading()  # the bytes held it: websockets' count did not

    def _paused_for_count(self) -> None:
        """websockets' queue went past ``--max-queue``: its own pause (the transport's
        pause_reading, as websockets' connection_made gives it), and the wait counted."""
        self.transport.pause_reading()
        self._begin_queue_wait()

    def frames_queued(self) -> bool:
        """Whether frames wait in websockets' incoming queue for the handler to take."""
        return bool(self.recv_messages.frames.queue)

    def _frame_taken(self, frames: deque[Frame]) -> None:
        if not frames:
            # A recv cancelled mid-message puts its frames back uncounted: counted
            # afresh from an empty queue, never held for frames no longer there.
            self._queued_sizes.clear()
            self._queued_bytes = 0
        elif self._queued_sizes:
            self._queued_bytes -= self._queued_sizes.pop(0)

    def _parse_slices(self, data: bytes) -> None:
        """``data`` to the parser a slice at a time while the byte rate allows and
        websockets' incoming queue has room; the rest is held, and reading stops,
        until the debt is repaid or the handler has taken frames. What waits in that
        queue, decoded and inflated, is bounded so: ``--max-queue`` frames, less than
        ``--max-queue-bytes`` of them but for a frame alone, and what one slice holds.
        Not called while held today: the transport reads nothing then (every resume
        checks ``_repaid`` and the queue; a stop's discard_input clears both first),
        and the frames sent along with the request come in the step that opened the
        connection, before any frame was parsed or charged."""
        if self._repaid is not None or self._queue_held or self._unheld is not None:
            # Unreachable with websockets 17 (no test gets here), kept because the cost
            # of being wrong is silent loss: a later websockets that fed us while held
            # would otherwise overwrite the held bytes. Behind what waits, never beside.
            self._held += data
            return
        size = DEFLATE_PARSE_SLICE if self.protocol.extensions else PARSE_SLICE
        # One slice mostly (a lone request's read), no range() made for it; b"" too:
        # the parser must go on from the handshake even with no early frame.
        starts = (0,) if len(data) <= size else range(0, len(data), size)
        for start in starts:
            if self._debt > 0:
                self._hold(data[start:])
                return
            if self._queue_full():
                self._held, self._queue_held = data[start:], True
                self.transport.pause_reading()
                self._begin_queue_wait()
                return
            _websockets_data_received(self, data[start : start + size])
            if self.protocol.close_rcvd is not None:
                self._bound_peer_close()  # the peer's close frame, read and answered
        if self._debt > 0:
            self._hold(b"")

    # What a read does with its bytes (arriving_frames.py ``ChargedArrivals`` adds its
    # look after the slices, calling _parse_slices by name: no super() per read).
    _parse_sliced = _parse_slices

    def _queue_full(self) -> bool:
        """websockets paused reading for its incoming queue (above ``--max-queue``), or
        the frames in it hold ``max_queue_bytes``, and something will read it: once our
        close is out, only the peer's close reply matters, and its data frames are
        dropped unqueued (process_event). An empty queue is never full: a frame over
        the byte bound is queued alone."""
        bound = self.max_queue_bytes
        over_bytes = bound is not None and self._queued_bytes >= bound
        return (self.recv_messages.paused or over_bytes) and not self._close_sent

    def _hold(self, rest: bytes) -> None:
        # The debt as of now, not as charged: a decoded frame's (charge_decoded) may
        # have waited for room in the queue since, repaying meanwhile.
        meter = self._meter
        debt = self._debt if meter is None else max(0.0, meter.charge(0))
        self._held = rest
        self.transport.pause_reading()
        self.read_waits.begin(debt)
        self._repaid = self.loop.call_later(debt, self._go_on)

    def charge_decoded(self, size: int) -> None:
        """What the handler found a frame to weigh decoded beyond its bytes (limits.py
        ByteRate), charged once it is decoded: its reading stops at once for the debt,
        as for a frame read into debt, or goes on after the longer wait if it waits
        already (_go_on). Held for room in the queue, or parsing what was held, it
        stops at the next slice parsed."""
        meter = self._meter
        if meter is None or size <= 0:
            return
        debt = meter.charge(size)
        if debt <= 0:
            return
        self._debt = debt
        reading = self._repaid is None and not self._queue_held and self._unheld is None
        if reading and not self._discarding and not self.transport.is_closing():
            self._hold(b"")

    def _stop_holding(self) -> None:
        """Ends a wait for the debt, or for room in the queue, before it is over: the
        transport is gone, or what the peer sends is discarded from now on."""
        if self._repaid is not None:
            self._repaid.cancel()
            self._repaid, self._held = None, b""
            self.read_waits.end()
        if self._unheld is not None:
            self._unheld.cancel()
            self._unheld = None
        self._queue_held, self._held = False, b""
        self._end_queue_wait()

    def _go_on(self) -> None:
        self._repaid, self._debt = None, 0.0
        self.read_waits.end()
        if self.transport.is_closing():
            return  # aborted in this same turn of the loop: nothing more to parse
        meter = self._meter
        if meter is not None and (debt := meter.charge(0)) > 0:
            # A frame decoded meanwhile (charge_decoded) added to the debt.
            self._debt = debt
            self._hold(self._held)
            return
        held, self._held = self._held, b""
        if held and not self._discarding:
            self._parse_sliced(held)
        if self._repaid is None:
            self._resume_reading()

    def _resume_reading(self) -> None:
        if self._queue_held:
            if self._queue_full():
                return
            # Called from websockets' queue as the handler takes a frame: what was held
            # is parsed from the loop, not inside that read.
            self._queue_held = False
            self._end_queue_wait()
            self._unheld = self.loop.call_soon(self._take_held)
            return
        if self._queue_full():
            return
        self._end_queue_wait()
        if not self.paused and self._repaid is None and self._unheld is None:
            self.transport.resume_reading()

    def _begin_queue_wait(self) -> None:
        if self._queue_wait_since is None:
            self._queue_wait_since = self.loop.time()

    def _end_queue_wait(self) -> None:
        since, self._queue_wait_since = self._queue_wait_since, None
        if since is not None:
            self._queue_waited += self.loop.time() - since

    def reading_held_seconds(self) -> float:
        """Seconds the server held reading back so far, the waits under way included:
        for the byte rate's debt (``read_waits``), or for its handler to take the frames
        in websockets' incoming queue. Neither is the peer's slowness: its bytes wait in
        the socket meanwhile. A debt's wait that overlaps a wait for the queue (a frame
        decoded into debt while the queue is full) counts in both."""
        held = self.read_waits.held_seconds() + self._queue_waited
        since = self._queue_wait_since
        return held if since is None else held + self.loop.time() - since

    async def keepalive(self) -> None:
        """websockets' keepalive, a Ping every ``ping_interval`` and close 1011 when its
        Pong is not read within ``ping_timeout``, but the time reading is held
        (``reading_held_seconds``) does not count, nor time the link keeps carrying
        bytes either way at link_progress.py's ``MIN_LINK_RATE``: the Pong waits behind
        the frames sent before it, which the server chose not to read yet, or which a
        slow uplink is still carrying; the Ping, behind what the server wrote before it
        to a slow reader. A peer that sent 20 frames of 16,000 values at once (1 MB,
        weighing 40 MiB decoded) was closed 1011 so, for its own debt; one uploading a
        1 MiB frame at 30 KB/s, after 40 s; one reading a 6 MB replay at 300 KB/s, after
        4.5 s of a 1 s / 2 s keepalive; each then sent, or was sent, the same bytes
        again on its next connection; one whose frames filled the incoming queue while
        a stalled store held the handler, once the stall outlasted the timeout."""
        assert self.ping_interval is not None
        latency = 0.0
        try:
            while True:
                await asyncio.sleep(self.ping_interval - latency)
                latency = await self._ping_once()
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)

    async def _ping_once(self) -> float:
        """One Ping, and its Pong's latency once read (0 with no ``ping_timeout``). Its
        own coroutine so that the wait's objects (the link's progress, the Pong's
        future) go with it, not held through the sleep to the next Ping on every idle
        connection."""
        # Before the Ping is written: where it ends in the output is known then.
        progress = LinkProgress(self.transport, self)
        pong = await self._ping_unless_stalled()
        if self.ping_timeout is None:
            self._forget_pings_before(pong)
            return 0.0
        return await self._pong_in_time(pong, self.ping_timeout, progress)

    def _forget_pings_before(self, latest: Awaitable[float]) -> None:
        """With no ``ping_timeout`` nothing waits for a Pong, and websockets kept every
        unanswered Ping (its payload, future and time, some 300 bytes) for the
        connection's life: a peer that never answers grew it by one each interval. A
        Pong acknowledges every Ping before its own, so the latest alone is kept."""
        pending = self.pending_pings
        for payload, (pong, _) in list(pending.items()):
            if pong is not latest:
                del pending[payload]
                pong.cancel()  # nobody awaits it: nothing to tell

    async def _ping_unless_stalled(self) -> Awaitable[float]:
        """websockets' ``ping()``, which waits for room in the connection's buffer (below
        a quarter of ``--write-limit``) before its Pong's timer starts; that wait ends
        in a 1011 once the peer's TCP acknowledged nothing of that buffer, and the peer
        sent nothing, over a whole ``stall_window``. A peer that filled the buffer (a
        few large pages asked for) and then read nothing kept its connection, and all
        it held, for as long as it pleased; an honest slow reader's TCP acknowledges in
        bursts, one each time its receive window reopens, well within that window."""
        stall = OutputStall.watch(self.transport, self)
        if stall is None or self.ping_timeout is None or self.ping_interval is None:
            return await self.ping()
        window = stall_window(self.ping_interval, self.ping_timeout)
        ping = asyncio.ensure_future(self.ping())
        try:
            while True:
                # asyncio.wait, not a timeout: the Ping's wait goes on, uncancelled,
                # past a look that finds the peer took something.
                await asyncio.wait((ping,), timeout=window)
                if ping.done():
                    return ping.result()
                if stall.stalled():
                    await self._keepalive_timeout()
        finally:
            ping.cancel()  # nothing once it is done; the keepalive cancelled, its wait

    async def _pong_in_time(
        self, pong_received: Awaitable[float], seconds: float, progress: LinkProgress
    ) -> float:
        """The Pong's latency, once it is read within ``seconds`` of reading, the waits
        for the debt not counted, and put off by ``seconds`` more each time the link
        showed ``progress`` since the last such look; else the connection fails with
        1011, as websockets'."""
        pong = asyncio.ensure_future(pong_received)  # websockets' future itself, no task
        held, deadline = self.reading_held_seconds(), self.loop.time() + seconds
        while True:
            # asyncio.wait, not asyncio.timeout: the Pong's future is websockets' to
            # resolve, and must not be cancelled by a deadline that is put off.
            await asyncio.wait((pong,), timeout=max(0.0, deadline - self.loop.time()))
            if pong.done():
                return pong.result()
            now = self.loop.time()
            if progress.alive(now):
                deadline, held = now + seconds, self.reading_held_seconds()
                continue
            held, was_held = self.reading_held_seconds(), held
            if held <= was_held:
                break
            deadline += held - was_held
        await self._keepalive_timeout()

    async def _keepalive_timeout(self) -> NoReturn:
        """Fails the connection with 1011, as websockets' keepalive does."""
        async with self.send_context():
            self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        raise AssertionError("send_context() waits for connection_lost(), which cancels this")

    def _take_held(self) -> None:
        """The queue has room again: what was held for it is parsed (it may be held
        again), then the socket read, unless something still holds it."""
        self._unheld = None
        if self.transport.is_closing():
            return
        held, self._held = self._held, b""
        if held and not self._discarding:
            self._parse_sliced(held)
        self._resume_reading()
