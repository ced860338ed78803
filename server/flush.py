"""Writing frames to sockets without a task switch per frame.

Producers (a session's actor fanning out an event, answering a request) put frames
into connections' outboxes. A connection whose writer task is idle does not need waking
for that: the :class:`Flusher` collects every outbox that got frames during one turn of
the event loop and, in one callback at the end of that turn, writes each one's frames
with one ``writelines`` (its :class:`DirectSink`). What a connection's reader pushes in
its own step (a lone event's ack and the event to its viewers, appended in that step;
an answer) it writes itself at the end of the frame it handled, where the callback
would have cost one more turn of the loop (a poll of every socket) per lone event. The
writer task runs only for what needs awaiting: a replay read from the store, a close, a
socket whose buffer is full.

A frame is framed once for all the connections it goes to (:func:`websocket_frame`):
server frames are never masked, so the bytes are the same for every peer of a codec.
The writer task sends the same bytes with :func:`send_frames`, awaiting room.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog
from websockets.protocol import OPEN

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from bamboo_session.protocol.codec import Codec

    from .http_wire import BambooConnection
    from .outbound import Outbound
    from .read_back import Replay
    from .writer_life import WriterLife

log = structlog.get_logger("bamboo_session.connection")

# asyncio's dict of the task each loop runs now, if it has one: on Python 3.11
# asyncio.current_task(loop) is a Python function that reads it (some 700 machine
# instructions a call, twice a lone event), where the dict's own get is one call.
# Python 3.14 keeps the dict for its Python tasks only, never filled by the C ones
# (which keep the running task on the thread's state): see running_task_reader.
_current_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[object]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)
RunningTask = Callable[[asyncio.AbstractEventLoop], "asyncio.Task[object] | None"]

_TEXT = 0x81  # FIN + text opcode
_BINARY = 0x82  # FIN + binary opcode


# The two-byte headers of payloads under 126 bytes (an ack, a short token), made once:
# every frame the server sends is framed here.
_SHORT_TEXT = tuple(bytes((_TEXT, length)) for length in range(126))
_SHORT_BINARY = tuple(bytes((_BINARY, length)) for length in range(126))


def websocket_frame(payload: bytes, text: bool) -> bytes:
    """``payload`` as one unmasked, unfragmented WebSocket frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        return (_SHORT_TEXT if text else _SHORT_BINARY)[length] + payload
    first = _TEXT if text else _BINARY
    if length < 65536:
        header = bytes((first, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + length.to_bytes(8, "big")
    return header + payload


def unframe(frame: bytes) -> tuple[bytes, bool]:
    """The payload of a frame made by :func:`websocket_frame`, and whether it is text."""
    length = frame[1]
    start = 2 if length < 126 else 4 if length == 126 else 10
    return frame[start:], frame[0] == _TEXT


class FramesOut(Protocol):
    """What counts the frames a sink writes for it (a connection: its log line's)."""

    frames_out: int


class DirectSink(Protocol):
    """Where an outbox's frames go without its writer task: the socket itself."""

    def can_write(self) -> bool:
        """Whether frames may be written now (connection open, buffer not full)."""
        ...

    def write(self, frames: list[bytes]) -> bool:
        """Write already framed ``frames`` to the socket, in order, in one go, if it can
        take them now (``can_write``); whether it did."""
        ...

    def close_at_once(self, frames: list[Outbound], code: int, reason: str) -> bool:
        """Write ``frames`` then the close frame, in one go, if the connection can end
        without awaiting anything; whether they were written."""
        ...

    def replay_at_once(self, replay: Replay, ahead: list[bytes]) -> bool:
        """Write already framed ``ahead`` and the whole of ``replay`` behind it, in one
        go, if the replay needs nothing awaited (server/replay_now.py); whether they
        were written (else nothing was, and the writer is to send the replay)."""
        ...

    def start_writer(self) -> None:
        """Start the connection's writer task: its outbox has work that must await
        (a replay, the close, a socket that is full), and no writer runs."""
        ...

    def abort(self) -> None:
        """End the connection at once, without a close frame: its client resumes."""
        ...


def running_task_reader(loop: asyncio.AbstractEventLoop) -> RunningTask:
    """How to read the task ``loop`` runs now, chosen from within one of its tasks: the
    get of asyncio's dict of them if the dict holds that task (Python 3.11 to 3.13, with
    uvloop's loops too), else ``asyncio.current_task``. Taken on trust, a dict that is
    there and never filled (Python 3.14) named no task ever: every push a reader made
    took the turn's end, the flush of its own frame a turn late."""
    running = asyncio.current_task(loop)
    if _current_tasks is not None and running is not None and _current_tasks.get(loop) is running:
        return _current_tasks.get
    return asyncio.current_task


def can_write_now(ws: ServerConnection) -> bool:
    """Whether frames may go to ``ws``'s socket without awaiting: the connection open,
    its write buffer below the high-water mark, no extension (compression) to transform
    them, and no fragmented message of websockets' own under way."""
    protocol = ws.protocol
    return (
        protocol.state is OPEN
        and not ws.paused
        and not protocol.extensions
        and not protocol.expect_continuation_frame
    )


def write_now(ws: ServerConnection, frames: list[bytes]) -> bool:
    """Writes already framed ``frames`` at once, in one ``writelines``, when ``ws`` can
    take them without awaiting (:func:`can_write_now`, and its transport not closing);
    whether it did. What websockets itself has queued (a pong) goes first."""
    if not can_write_now(ws) or ws.transport.is_closing():
        return False
    chunks = ws.protocol.data_to_send()
    chunks.extend(frames)
    ws.transport.writelines(chunks)
    return True


class WebSocketSink:
    """A connection's socket, written to as websockets' ``send()`` would, minus the
    await: only while the connection is open, its write buffer below the high-water
    mark, and no extension (compression) transforms frames."""

    __slots__ = ("_counter", "codec", "replay_at_once", "start_writer", "ws")

    def __init__(
        self,
        ws: BambooConnection,
        codec: Codec,
        counter: FramesOut,
        start_writer: Callable[[], None],
        replay_at_once: Callable[[Replay, list[bytes]], bool] | None = None,
    ) -> None:
        self.ws = ws
        self.codec = codec  # the connection's: what its frames are framed with
        # What counts the frames sent (the connection), added to here: a callback was
        # a call more per connection per event of a fan-out.
        self._counter = counter
        self.start_writer = start_writer
        self.replay_at_once = replay_at_once or _never_at_once

    def can_write(self) -> bool:
        # can_write_now's checks, inline: this runs for every connection a fan-out
        # writes to, where a call more is a call per connection per event.
        ws = self.ws
        protocol = ws.protocol
        return (
            protocol.state is OPEN
            and not ws.paused
            and not protocol.extensions
            and not protocol.expect_continuation_frame
        )

    def write(self, frames: list[bytes]) -> bool:
        # can_write's checks, inline: this runs for every connection a turn wrote to.
        # The state read from the field behind websockets' ``state`` property, a call
        # less per viewer of each event (websockets is pinned: pyproject.toml).
        ws = self.ws
        protocol = ws.protocol
        if (
            protocol._state is not OPEN
            or ws.paused
            or protocol.extensions
            or protocol.expect_continuation_frame
        ):
            return False
        if protocol.writes:  # what websockets itself has queued (a pong) goes first
            frames[:0] = protocol.data_to_send()
        ws.transport.writelines(frames)
        self._counter.frames_out += len(frames)
        return True

    def close_at_once(self, frames: list[Outbound], code: int, reason: str) -> bool:
        """A stopping server's close (its input discarded: server/shutdown.py), written
        behind ``frames`` in one write when the socket has room: no writer task. Nothing
        is left to await: the peer's close reply is dropped unread, and the server's exit
        (or ``drop_connections``) closes the socket once the peer holds these bytes
        (``bytes_delivered``). A peer that does not take them is dropped by the close's
        bound (server/connection.py), at the close timeout from this write, as the
        writer's close is. Otherwise False: the writer closes, within the close timeout
        (server/closing.py)."""
        ws = self.ws
        if not ws.discarding or not self.can_write():
            return False
        protocol = ws.protocol
        chunks = protocol.data_to_send()  # a pong queued by websockets goes first
        codec = self.codec
        chunks += [out.framed(codec) for out in frames]
        protocol.send_close(code, reason)
        chunks.extend(protocol.data_to_send())
        ws.transport.writelines(chunks)
        ws.close_frame_out()
        # The close timer starts now, as websockets starts it for a close it sends: the
        # bound's close() (close_within) would start it only then, a close timeout late.
        if ws.close_timeout is not None:
            ws.close_deadline = ws.loop.time() + ws.close_timeout
        self._counter.frames_out += len(frames)
        return True

    def abort(self) -> None:
        self.ws.transport.abort()


def _never_at_once(replay: Replay, ahead: list[bytes]) -> bool:
    """A sink's ``replay_at_once`` where nothing can send a replay but the writer."""
    return False


class Flusher:
    """Outboxes with frames to write, flushed once per turn of the event loop; or, for
    frames a connection's reader pushed in its own step, by that reader at the end of
    the frame it handled (:meth:`frame_done`), so that a lone event's ack and its
    viewers' frames leave in the turn that read it, not in one more turn of the loop."""

    __slots__ = ("_dirty", "_handle", "_loop", "_readers", "_running_task")

    def __init__(self) -> None:
        """Made in a task of the running loop (the server's start)."""
        self._loop = asyncio.get_running_loop()
        self._running_task = running_task_reader(self._loop)
        self._dirty: list[WriterLife] = []
        self._handle: asyncio.Handle | None = None
        # Readers' tasks, each writing what it pushes itself at the end of every frame
        # it handles (frame_done) and as it stops reading (stopped_reading).
        self._readers: set[asyncio.Task[object]] = set()

    def add(self, outbox: WriterLife) -> None:
        self._dirty.append(outbox)
        # A reader pushing in its own step writes at its frame's end: no turn for it.
        # Anything else (another task, a callback: the store's answer, a timer, a close)
        # has the turn's end: a reader awaiting its store meanwhile is not in its step,
        # and a push from elsewhere never waits for one.
        if self._handle is None and self._running_task(self._loop) not in self._readers:
            self._handle = self._loop.call_soon(self._flush)

    def reading(self, reader: asyncio.Task[object]) -> None:
        """``reader`` (a connection's reading task) writes what it pushes itself, at the
        end of each frame it handles (:meth:`frame_done`): it never awaits between a
        push and that frame's end."""
        self._readers.add(reader)

    def stopped_reading(self, reader: asyncio.Task[object]) -> None:
        """``reader`` reads no more: what it pushed is written now, and from here on
        its pushes wait for the turn's end, as anyone's."""
        self._readers.discard(reader)
        self.frame_done()

    def frame_done(self) -> None:
        """A reader handled a frame: what it pushed is written now. When a flush is
        due at the turn's end anyway (something else pushed in this turn), that one
        writes it, with the rest: a connection written to from several steps of one
        turn still gets one write."""
        while self._dirty and self._handle is None:
            self._flush()  # (again for what its writes pushed, if anything did)

    def _flush(self) -> None:
        self._handle = None
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            try:
                outbox.flush()
            except Exception:
                # A fault of ours in one connection's write must not keep the others'
                # frames back (nor leave them flagged as scheduled, never flushed again).
                # Frames taken for it may be lost, so its socket is dropped: its client
                # resumes, and no gap goes unnoticed.
                outbox.drop_socket()
                _log_dropped(outbox)


def _log_dropped(outbox: WriterLife) -> None:
    """The error line of a connection the flusher dropped (its traceback included)."""
    # Logged in a context of its own: the flush runs in the context of whichever task
    # queued the turn's first frame, whose ids may be another connection's or session's.
    contextvars.Context().run(
        log.exception,
        "writing a connection's frames failed; connection dropped",
        connection_id=outbox.connection_id,
    )


async def send_frames(ws: ServerConnection, frames: list[bytes]) -> None:
    """Send already framed ``frames`` (:meth:`Outbound.framed`) with one write to the
    socket, with websockets' flow control and error handling: this is ``send()``'s
    context around one ``writelines`` instead of a frame at a time. The writer task's
    way, when it must await room in the socket's buffer; server/flush.py writes the same
    bytes without awaiting when there is room. With an extension (compression) frames
    are left to websockets to transform.

    Frames that the socket has room for are written at once (:func:`write_now`): what
    ``send()``'s context would await then is nothing. Written past the high-water mark,
    they are in the socket's buffer, and what is left is the wait for room."""
    if write_now(ws, frames):
        if not ws.paused:
            return
        frames = []  # written: the context below only waits for the buffer to drain
    protocol = ws.protocol
    async with ws.send_context():
        if protocol.extensions:
            for data in frames:
                # websockets builds (and compresses) each frame itself: the payload.
                payload, text = unframe(data)
                if text:
                    protocol.send_text(payload)
                else:
                    protocol.send_binary(payload)
        else:
            chunks = protocol.data_to_send()
            chunks.extend(frames)
            ws.transport.writelines(chunks)
