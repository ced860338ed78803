"""One WebSocket connection: handshake (``hello``, server/handshake.py), then a reader,
and a writer task while there is something to await.

The reader decodes frames and posts commands to the session's actor (waiting when the
actor's inbox is full, which pushes back on the peer's socket); the writer sends what
the flusher leaves it (a replay, the close, frames for a full socket; see
server/writer_life.py) and ends once the outbox is empty. Failures become ``error``
frames or close codes as server/failures.py says; an unexpected exception closes with
1011 and tells the peer nothing more.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from functools import partial

import structlog
from websockets.exceptions import ConnectionClosed

from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import CloseCode, ErrorCode, ProtocolError
from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.frames import (
    ClientFrame,
    Error,
    EventsRequest,
    Hello,
    HistoryRequest,
    Ping,
    Pong,
    PublishBatch,
    PublishEvent,
    PublishMessage,
    RequestId,
    StateRequest,
)
from bamboo_session.protocol.ids import new_connection_id
from bamboo_session.protocol.models import NOT_MESSAGES, MessageEvent, SessionState

from .actor import SessionActor
from .batch_submit import submit_batch
from .closing import close_within, closed_for_rate, cut_replay
from .commands import Append, SetState
from .connection_end import end_connection
from .decode_charge import decode_charged
from .flush import send_frames
from .handshake import attach, read_hello
from .http_wire import BambooConnection
from .limits import FrameLimiter
from .outbound import Outbound
from .outbox import CloseRequest, Outbox
from .page_requests import answer_page
from .read_allowance import ReadAllowance
from .read_back import Replay
from .replay import send_replay
from .replay_shares import ReplayShare
from .sent_events import WRITER
from .services import Services
from .token_expiry import TokenExpiry
from .whole_frames import next_message

# Frames the reader takes in a row before it gives the loop a turn (a refused one gives
# it at once): pings, and publishes while the connection has room in flight, await
# nothing, so a peer's queue of them would otherwise be drained in one pass.
FRAMES_PER_TURN = 64

log = structlog.get_logger("bamboo_session.connection")
_SEND_BATCH = 256  # frames written to the socket at once, at most


class Connection:
    """A peer attached (or attaching) to one session over one WebSocket."""

    __slots__ = (
        "_closer",
        "_overflow_counted",
        "actor",
        "codec",
        "connection_id",
        "context",
        "counted_user",
        "expiry",
        "frames_in",
        "frames_out",
        "limiter",
        "outbox",
        "page_waited",
        "read_allowance",
        "reader",
        "replay_share",
        "services",
        "session_id",
        "started",
        "writer",
        "ws",
    )

    def __init__(
        self, services: Services, ws: BambooConnection, codec: Codec, session_id: str | None
    ) -> None:
        self.services = services
        self.ws = ws
        self.codec = codec
        self.session_id = session_id
        self.connection_id = new_connection_id()
        # Its writer's and its close's (bind_log_ids): not the context of whichever task
        # started them (its session's actor, another connection), whose ids they'd log.
        self.context = contextvars.Context()
        self.actor: SessionActor | None = None
        self.outbox: Outbox | None = None
        self._overflow_counted = False
        self._closer: asyncio.Task[None] | None = None
        self.expiry: TokenExpiry | None = None  # the close at the token's expiry
        self.frames_in = 0
        self.frames_out = 0
        self.started = time.monotonic()
        config = services.config
        self.limiter = FrameLimiter(
            config.rate_limit, config.rate_limit_burst, config.rate_limit_refusals
        )
        self.counted_user: str | None = None  # counted in services.user_connections
        self.read_allowance: ReadAllowance | None = None  # its peer's, set at attach
        self.page_waited = 0.0  # seconds its pages waited for that allowance
        self.replay_share: ReplayShare | None = None  # its peer's, set at attach
        self.writer: asyncio.Task[None] | None = None  # while it has work (start_writer)
        self.reader: asyncio.Task[object] | None = None  # this task, once attached (_serve)

    async def run(self) -> None:
        self.bind_log_ids(connection_id=self.connection_id, session_id=self.session_id)
        self.services.metrics.connections_total.inc()
        try:
            hello = await read_hello(self)
            if hello is not None and await attach(self, hello):
                await self._serve()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed")
            await close_within(
                self.ws,
                CloseCode.INTERNAL_ERROR,
                "internal error",
                self.services.config.close_timeout,
            )
        finally:
            end_connection(self)

    def bind_log_ids(self, **ids: str | None) -> None:
        """Binds ``ids`` to the log lines of this connection's handler (the calling task)
        and of what runs on its behalf, started from other tasks (its ``context``)."""
        structlog.contextvars.bind_contextvars(**ids)
        self.context = contextvars.copy_context()

    # -- attached ----------------------------------------------------------------

    async def _serve(self) -> None:
        """Reads in this task (one task fewer per connection); a writer task sends what
        must await, started when there is such work and ended when there is none
        (Outbox.run_writer_on_demand): the flusher writes the rest, the welcome too.
        Whichever side closes the socket ends the other."""
        assert self.outbox is not None
        reader = self.reader = asyncio.current_task()
        assert reader is not None
        self.services.metrics.connections.inc()
        flusher = self.services.flusher
        try:
            self.outbox.run_writer_on_demand()
            flusher.reading(reader)
            await self._read()
        finally:
            flusher.stopped_reading(reader)
            self.services.metrics.connections.dec()
            if self.writer is not None:
                self.writer.cancel()

    def start_writer(self) -> None:
        """The outbox has work for a writer, and none runs: one is started."""
        self.writer = asyncio.create_task(
            self._write(), name=f"writer:{self.connection_id}", context=self.context.copy()
        )
        self.writer.add_done_callback(self._writer_done, context=self.context)

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        if self.writer is writer:  # not one started since: an idle connection holds none
            self.writer = None
        if writer.cancelled() or isinstance(writer.exception(), ConnectionClosed):
            return
        if writer.exception() is not None:
            log.error("connection writer failed", exc_info=writer.exception())
            self._close_soon(CloseRequest(CloseCode.INTERNAL_ERROR, "internal error"))

    async def _read(self) -> None:
        assert self.actor is not None and self.outbox is not None
        actor, outbox = self.actor, self.outbox
        # In either codec an event is stored larger than its frame may be, and every frame
        # that carries it adds its envelope (decode_charge.py).
        max_event_json = max(1, self.services.config.max_frame_bytes - EVENT_ENVELOPE_BYTES)
        # Bound by position: a partial with a keyword copies a dict at each call.
        decode = partial(decode_charged, self.codec, self.ws, max_event_json)
        limiter, flusher = self.limiter, self.services.flusher
        taken = 0
        while True:
            # No local of this loop keeps a frame, as read or decoded, while the next is
            # awaited: a peer that sent a big one and went quiet would have it kept for
            # as long as it stays, and a batch's items would be walked by the cycle
            # collector meanwhile.
            refused = await self._take(await next_message(self.ws), actor, outbox, decode, limiter)
            # What this frame's step pushed (its ack, the event to the session's viewers,
            # an answer) is written now, not at the end of the loop's turn: one turn
            # fewer per lone event (server/flush.py Flusher).
            flusher.frame_done()
            taken += 1
            if refused or taken >= FRAMES_PER_TURN:
                # ws.recv() returns at once while frames are queued, and a refusal, a
                # ping or a publish with room in flight awaits nothing: without a turn,
                # each reader drained its whole queue in one pass, and peers whose
                # frames cost ~18 ms each to refuse (a decode to the free-form values
                # bound) held the loop that long per queued frame, every other
                # connection waiting.
                taken = 0
                await asyncio.sleep(0)

    async def _take(
        self,
        data: str | bytes,
        actor: SessionActor,
        outbox: Outbox,
        decode: Callable[[str | bytes], tuple[ClientFrame, int]],
        limiter: FrameLimiter,
    ) -> bool:
        """One frame read: refused, or decoded and handled. The frame as read is let go
        before the request waits for room (its weight, its bytes and free-form values
        decoded, is what the session's request queue and the memory budget count).
        Whether it was refused (over the rate, or answered with an error), which may
        have cost a whole decode and awaited nothing."""
        self.frames_in += 1
        if outbox.closing is not None:
            return False  # closing: read on (for the closing handshake), answer nothing
        if not limiter.admit():
            self._refuse_frame(data, limiter, outbox)
            return True
        try:
            frame, size = decode(data)
            del data
            if type(frame) is not Ping or frame.keepalive is not True:
                actor.timer.note_traffic()
            await self._dispatch(frame, size, actor, outbox)
        except ProtocolError as exc:
            actor.timer.note_traffic()
            self.push_error(exc.code, exc.message, exc.request_id)
            return True
        return False

    def _refuse_frame(self, data: bytes | str, limiter: FrameLimiter, outbox: Outbox) -> None:
        """A frame over the rate: not processed; ``rate_limited`` (with its ``id``), or
        close 4429 once the peer has ignored too many of those."""
        if outbox.closing is not None or closed_for_rate(limiter, outbox):
            return
        try:
            request_id = getattr(decode_charged(self.codec, self.ws, 0, data)[0], "id", None)
        except ProtocolError as exc:
            request_id = exc.request_id
        rate = self.services.config.rate_limit
        self.push_error(ErrorCode.RATE_LIMITED, f"over {rate:g} frames/s", request_id)

    async def _dispatch(
        self, frame: ClientFrame, size: int, actor: SessionActor, outbox: Outbox
    ) -> None:
        if isinstance(frame, PublishEvent):
            # Not a class pattern of the match below: it reads its keywords by getattr
            # and makes a set for them, some 2,000 machine instructions (1% of a lone
            # event), where these reads are plain.
            event = frame.event
            if type(event) not in NOT_MESSAGES and isinstance(event, MessageEvent):
                event = MessageEvent(event.message.completed())
            append = Append(event, frame.key, outbox, frame.id, None, time.monotonic(), size)
            await self._submit(actor, outbox, append)
            return
        match frame:
            case PublishMessage(message=message, key=key, id=request_id):
                event = MessageEvent(message.completed())
                append = Append(event, key, outbox, request_id, None, time.monotonic(), size)
                await self._submit(actor, outbox, append)
            case PublishBatch():
                await submit_batch(self, frame, actor, outbox, size)
            case HistoryRequest() | EventsRequest():
                await answer_page(self, frame, outbox)
            case StateRequest(state=state, id=request_id):
                command = SetState(SessionState(state), outbox, request_id)
                await self._submit(actor, outbox, command)
            case Ping(id=request_id):
                outbox.push(Outbound(Pong(id=request_id)))
            case Hello(id=request_id):
                raise ProtocolError(ErrorCode.BAD_REQUEST, "hello was already received", request_id)

    async def _submit(
        self, actor: SessionActor, outbox: Outbox, command: Append | SetState
    ) -> None:
        """Posts a request whose reply the actor sends, once this connection may have
        one more in flight; waits (and so stops reading) only when it may not. A lone
        append to an idle actor is handled here and now (SessionActor.append_now)."""
        if outbox.in_flight < outbox.max_in_flight:
            outbox.in_flight += 1
        else:
            await actor.inbox.budget.charged_while(_weight(command), outbox.reserve())
        if not actor.inbox.may_post():
            await actor.inbox.budget.charged_while(_weight(command), actor.inbox.wait_for_room())
        if type(command) is Append and actor.takes_now() and not self.ws.frames_queued():
            assert self.reader is not None  # set as the reading began (_serve)
            await actor.append_now(command, self.reader)
            if self.ws.frames_queued():  # came while the store held it: not a burst
                self.limiter.held(outbox.max_in_flight)
        else:
            actor.post(command)

    def count_page_wait(self, seconds: float) -> None:
        """A page of this connection's waited ``seconds`` for its peer's allowance."""
        self.page_waited += seconds
        self.services.metrics.page_wait_seconds.inc(seconds)

    def push_error(self, code: ErrorCode, message: str, request_id: RequestId) -> None:
        assert self.outbox is not None
        self.outbox.push(Outbound(Error(code.value, message, id=request_id)))
        self.services.metrics.errors.labels(code=code.value).inc()

    async def _write(self) -> None:
        """Sends what the flusher leaves it (server/flush.py): frames waiting for room in
        the socket (what is queued in one write, send_frames, each frame checked on its
        way, to_socket), replays, the close; ends once the outbox is empty."""
        assert self.outbox is not None and self.actor is not None
        outbox, ws, codec = self.outbox, self.ws, self.codec
        while (item := outbox.take()) is not None:
            if isinstance(item, Outbound):
                batch = outbox.to_socket(outbox.take_frames(item, _SEND_BATCH), WRITER)
                await send_frames(ws, [out.framed(codec) for out in batch])
                self.frames_out += len(batch)
                del batch  # not held through a replay or a close that follows
            elif isinstance(item, Replay):
                await self._replay(item)
            else:
                await self._close(item)
                return

    async def _replay(self, replay: Replay) -> None:
        assert self.outbox is not None and self.actor is not None
        self.frames_out += await send_replay(
            replay,
            self.actor.replay_reads,
            self.services.page_reads,
            self.outbox,
            self.ws,
            self.codec,
            self.services.config.replay_page_timeout,
            self.read_allowance,
            self.replay_share,
        )

    def on_outbox_closed(self, request: CloseRequest) -> None:
        """The outbox asks for a close: at once on overflow, else after what is queued."""
        if self.ws.close_code is not None:
            return  # already closed: the peer left first (a detach)
        if request.overflow:
            self._close_soon(request)
        else:
            # The writer sends what is queued, then closes; should the peer stop
            # reading meanwhile, the close happens from outside the stuck writer.
            grace = self.services.config.close_timeout
            asyncio.get_running_loop().call_later(
                grace, self._close_soon, request, True, context=self.context
            )

    def _close_soon(self, request: CloseRequest, bound: bool = False) -> None:
        if self._closer is None and self.ws.close_code is None:
            if bound:  # a replay the close let go on stops here (server/closing.py)
                cut_replay(self.outbox, self.ws, self.codec)
            self._closer = asyncio.create_task(self._close(request), context=self.context.copy())

    async def _close(self, request: CloseRequest) -> None:
        if request.code == CloseCode.TOO_SLOW and request.overflow and not self._overflow_counted:
            self._overflow_counted = True
            self.services.metrics.send_queue_drops.inc()
        await close_within(
            self.ws, request.code, request.reason, self.services.config.close_timeout
        )


def _weight(command: Append | SetState) -> int:
    """What a request waiting for room holds of the memory budget meanwhile."""
    return command.size if type(command) is Append else 0
