"""When a connection's writer task runs: the outbox's side of it.

Frames queued during one turn of the event loop go to the socket at the end of that
turn, through the :class:`~server.flush.Flusher`, with no task involved (those a
connection's reader queued in its own step, at the end of the frame it handled). A
writer task runs only for what must be awaited (a replay read from the store, the close,
a socket whose buffer is full; a stopping server's close is written with the frames
ahead of it, by the flusher): the outbox starts it when such work is queued and none
runs, and it ends once the outbox is empty, so an idle connection holds no task. What one
write takes from the queue is here too: the flusher's write of a turn's frames, one
loop over them (``flush``), and the writer's (``take_frames``). The outbox's queue
itself, its bounds and its close are server/outbox.py's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from .flush import DirectSink, Flusher
from .outbound import EventOutbound, Outbound
from .read_back import Replay
from .sent_events import FLUSH, SentEvents

if TYPE_CHECKING:
    from bamboo_session.protocol.codec import Codec

    from .budget import MemoryBudget
    from .metrics import Metrics
    from .outbox import OutboxItem

# One write to a socket: at most FLUSH_FRAMES frames and WRITE_BYTES bytes of frames (one
# frame at least); the rest waits in the queue (counted, bounded) for the next one.
FLUSH_FRAMES: Final = 256
WRITE_BYTES: Final = 256 * 1024

# Frames as written, in a write's order (named here: in the class below, ``bytes`` is
# the queue's count of them).
Framed = list[bytes]


class WriterLife(SentEvents):
    """Whether a connection's writer runs, waits or is absent, and what wakes or starts
    it; the base of :class:`~server.outbox.Outbox`, whose queue it hands out.

    Three states. Before ``run_writer_on_demand`` (and for an in-process receiver,
    which has no sink) the writer waits in ``get`` for an item (``_waiter`` set while
    it does). After it, the writer is absent (``_writer_absent``) until work that must
    be awaited is queued, then at work until ``take`` finds the queue empty, in the
    same step as it ends: nothing can be queued between the two. Its base checks what
    goes to the socket (server/sent_events.py)."""

    __slots__ = (
        "_head",
        "_items",
        "_loop",
        "_scheduled",
        "_waiter",
        "_writer_absent",
        "budget",
        "bytes",
        "codec",
        "flusher",
        "sink",
    )

    # The queue and its counts, which the flush takes from: set by the Outbox.
    _items: list[OutboxItem]
    _head: int
    codec: Codec
    bytes: int
    budget: MemoryBudget

    if TYPE_CHECKING:  # the connection's id and the queue's ways, kept by the Outbox
        connection_id: str

        def __len__(self) -> int: ...
        def _head_item(self) -> OutboxItem: ...
        def _taken(self, head: int, size: int) -> None: ...
        def close_with(self, frames: list[Outbound]) -> bool: ...

    def __init__(self, session_id: str | None = None, metrics: Metrics | None = None) -> None:
        super().__init__(session_id, metrics)
        self._waiter: asyncio.Future[None] | None = None  # set while the writer is idle
        # A connection's writer runs only while it has work (run_writer_on_demand): an
        # idle connection holds no task, and most connects never start one.
        self._writer_absent = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # Frames go straight to the socket at the end of the loop's turn while the
        # writer is idle (server/flush.py); without a sink, the writer sends them.
        self.sink: DirectSink | None = None
        self.flusher: Flusher | None = None
        self._scheduled = False

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        # Asked once: on Python 3.11, asyncio.get_running_loop() is a getpid() call.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _writer_idle(self) -> bool:
        """Whether the writer waits for work (or is not running: it starts when needed);
        else it is at work, and takes what is queued."""
        if self._writer_absent:
            return True
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _rouse_writer(self) -> None:
        """An idle writer is woken, an absent one started (``_writer_idle`` first)."""
        if self._writer_absent:
            self._writer_absent = False
            assert self.sink is not None
            self.sink.start_writer()
        else:
            assert self._waiter is not None
            self._waiter.set_result(None)

    def run_writer_on_demand(self) -> None:
        """From now on the writer runs only while it has work: it ends when the queue is
        empty (``take``), and the sink's ``start_writer`` starts it again when a replay,
        the close, or a socket that is full needs it. What is queued already goes now."""
        self._writer_absent = True
        self.flush()

    def _writer_ended(self) -> None:
        """The writer found the queue empty and ends: the next work starts another."""
        self._writer_absent = True

    def _no_more_writers(self) -> None:
        """The connection is gone: nothing starts a writer for it any more."""
        self._writer_absent = False

    def drop_socket(self) -> None:
        """Its socket ends at once (a fault while writing: the flusher), so that its
        client resumes from what it holds."""
        if self.sink is not None:
            self.sink.abort()

    def _wake(self) -> None:
        if self._writer_idle():
            self._rouse_writer()

    def _notify(self) -> None:
        """Something was queued: an idle writer is woken, or, with a sink, the frames are
        flushed at the end of this turn of the loop (or of the reader's frame, if a
        reader queued them: Flusher.add) without waking it."""
        if not (self._writer_absent or self._writer_idle()):
            return  # the writer is at work: it takes what was queued
        if self.sink is None or self.flusher is None:
            self._rouse_writer()
        elif not self._scheduled:
            self._scheduled = True
            self.flusher.add(self)

    def flush(self) -> None:
        """Writes the queued frames to the sink while the writer is idle, and the close
        behind them where the sink can end the connection at once (a stopping server);
        what needs the writer (a replay, the close, a socket that is full) wakes it.

        The live case is one loop: each frame's size, its seq checked as to_socket
        would, its bytes; then the queue's and the budget's counts, the last seq sent
        and the write once for all of them. Anything else (a frame to hold back, a
        close asked for) takes the general way: take_frames, to_socket, close_with."""
        self._scheduled = False
        if not self._writer_absent:
            waiter = self._waiter
            if waiter is None or waiter.done():
                return  # the writer is at work: it takes what was queued
        items, head = self._items, self._head
        queued = len(items)
        if queued == head:
            return
        sink = self.sink
        assert sink is not None
        if self.closing is not None:
            self._flush_checked(sink)  # the close may go behind the frames
        else:
            text, sent = self.codec.text, self.sent_seq
            chunks: list[bytes] = []
            end = queued if queued - head <= FLUSH_FRAMES else head + FLUSH_FRAMES
            index, size, held = head, 0, False
            while index < end and size < WRITE_BYTES:
                out = items[index]
                # By exact type (as Outbox.push tells frames from the rest): an
                # isinstance of a Struct's subclass asks its metaclass, ~800 instructions.
                if type(out) is not EventOutbound and type(out) is not Outbound:
                    break  # a replay: the writer's
                seq = out.seq
                if seq:  # an event, checked as to_socket checks it
                    if seq - sent != 1 and (seq <= sent or not self.expects_gaps):
                        held = True  # to_socket holds it back, or closes at a gap
                        break
                    sent = seq
                data = out.json_frame if text else out.msgpack_frame
                if data is None:
                    data = out.framed(self.codec)
                size += out.event_size or len(data)
                chunks.append(data)
                index += 1
            if held:
                self._flush_checked(sink)
            elif (
                index < queued  # (drained, the common case, asks nothing more)
                and type(stop := items[index]) is Replay
                and self._replay_at_once(sink, stop, chunks, sent, index, size)
            ):
                return  # written with the replay behind them
            elif chunks and sink.write(chunks):
                self.sent_seq = sent
                if index == queued:  # drained, the common case: _taken's, inline
                    items.clear()
                    self._head = 0
                    self.bytes -= size
                    self.budget.used -= size
                    return  # nothing left for the writer
                self._taken(index, size)
        if len(self._items) != self._head:
            self._rouse_writer()

    def _replay_at_once(
        self, sink: DirectSink, replay: Replay, ahead: Framed, sent: int, index: int, size: int
    ) -> bool:
        """``ahead`` (the frames before ``replay``, to ``index``, ``size`` bytes) and the
        replay written together, when the replay needs nothing awaited (a resume a few
        events behind, from the ring: server/replay_now.py); then what is queued behind
        it, as :meth:`flush` would. False, nothing changed, when the writer must send it."""
        before, self.sent_seq = self.sent_seq, sent
        if not sink.replay_at_once(replay, ahead):
            self.sent_seq = before
            return False
        self._taken(index + 1, size)  # the frames ahead and the replay
        if len(self._items) != self._head:
            self.flush()  # what was queued behind the replay (presence, live events)
        return True

    def _flush_checked(self, sink: DirectSink) -> None:
        """:meth:`flush`'s general way: frames taken, then checked (to_socket), then
        written, or written with the close behind them (close_with)."""
        if sink.can_write():
            frames = self.to_socket(self.take_frames(None, FLUSH_FRAMES), FLUSH)
            if (self.closing is None or not self.close_with(frames)) and frames:
                codec = self.codec
                sink.write([out.framed(codec) for out in frames])

    def take_frames(self, first: Outbound | None, limit: int) -> list[Outbound]:
        """``first`` (if given) and the frames queued right behind it, up to ``limit``
        frames and about :data:`WRITE_BYTES`, so that they go to the socket together (it
        stops at a replay or the close). What is taken leaves the queue's count of bytes
        and the budget's; bounding a write keeps what sits in the socket's buffer,
        uncounted, to about one write past its high-water mark."""
        codec, items, head = self.codec, self._items, self._head
        frames = [] if first is None else [first]
        written = 0 if first is None else first.event_size or len(first.framed(codec))
        end = min(len(items), head + limit - len(frames))
        index, taken = head, 0
        # Each frame's size is read once, and the queue's count updated once for all.
        while index < end and written < WRITE_BYTES:
            item = items[index]
            if not isinstance(item, Outbound):
                break
            size = item.event_size or len(item.framed(codec))
            written += size
            taken += size
            frames.append(item)
            index += 1
        if index != head:
            self._taken(index, taken)
        return frames

    async def _work_queued(self) -> None:
        """Waits (the writer, run by ``get``) until something is queued."""
        while not len(self):
            self._waiter = self._event_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
