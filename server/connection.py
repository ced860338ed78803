"""One WebSocket connection: handshake (``hello``), then a reader and a writer task.

The reader decodes frames and posts commands to the session's actor (waiting when the
actor's inbox is full, which pushes back on the peer's socket); the writer drains the
connection's outbox to the socket. Every failure of the peer maps to an ``error`` frame
or a close code here; an unexpected exception closes with 1011 and tells the peer
nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence.base import (
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    StorageError,
)
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import CloseCode, ErrorCode, ProtocolError
from bamboo_session.protocol.frames import (
    ClientFrame,
    Error,
    EventRecord,
    Events,
    EventsRequest,
    Hello,
    History,
    HistoryRequest,
    Ping,
    Pong,
    PublishEvent,
    PublishMessage,
    RequestId,
    StateRequest,
)
from bamboo_session.protocol.ids import new_connection_id
from bamboo_session.protocol.models import MessageEvent, SessionState

from .actor import Append, SessionActor, SetState
from .auth import Forbidden, Unauthorized
from .limits import FrameLimiter, TooManyConnections
from .manager import ServerBusy
from .outbox import CloseRequest, Outbound, Outbox, Replay, send_frames

if TYPE_CHECKING:
    from .app import BambooServer

log = structlog.get_logger("bamboo_session.connection")
T = TypeVar("T")
_SEND_BATCH = 256  # frames written to the socket at once, at most

_ATTACH_FAILURES: dict[type[Exception], tuple[CloseCode, str]] = {
    SessionNotFound: (CloseCode.NOT_FOUND, "session not found"),
    SessionExpired: (CloseCode.NOT_FOUND, "session expired"),
    SessionClosed: (CloseCode.SESSION_CLOSED, "session closed"),
    ServerBusy: (CloseCode.TRY_AGAIN_LATER, "server at its session limit"),
    StorageError: (CloseCode.INTERNAL_ERROR, "storage unavailable"),
    TooManyConnections: (CloseCode.TOO_SLOW, "too many connections for this user"),
}
# Refusals whose message (fixed strings of server/auth.py) becomes the close reason.
_AUTH_FAILURES: dict[type[Exception], CloseCode] = {
    Unauthorized: CloseCode.UNAUTHORIZED,
    Forbidden: CloseCode.FORBIDDEN,
}


class Connection:
    """A peer attached (or attaching) to one session over one WebSocket."""

    __slots__ = (
        "_close_counted",
        "_closer",
        "actor",
        "codec",
        "connection_id",
        "counted_user",
        "frames_in",
        "frames_out",
        "limiter",
        "outbox",
        "server",
        "session_id",
        "started",
        "ws",
    )

    def __init__(
        self, server: BambooServer, ws: ServerConnection, codec: Codec, session_id: str | None
    ) -> None:
        self.server = server
        self.ws = ws
        self.codec = codec
        self.session_id = session_id
        self.connection_id = new_connection_id()
        self.actor: SessionActor | None = None
        self.outbox: Outbox | None = None
        self._close_counted = False
        self._closer: asyncio.Task[None] | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.started = time.monotonic()
        config = server.config
        self.limiter = FrameLimiter(
            config.rate_limit, config.rate_limit_burst, config.rate_limit_refusals
        )
        self.counted_user: str | None = None  # counted in server.user_connections

    async def run(self) -> None:
        # Every log line of this connection's tasks carries its ids (task-local context).
        structlog.contextvars.bind_contextvars(
            connection_id=self.connection_id, session_id=self.session_id
        )
        try:
            hello = await self._read_hello()
            if hello is not None and await self._attach(hello):
                await self._serve()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed")
            await self.ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._detach()
            self._log_summary()

    # -- handshake -------------------------------------------------------------

    async def _read_hello(self) -> Hello | None:
        timeout = self.server.config.hello_timeout
        try:
            data = await asyncio.wait_for(self.ws.recv(decode=False), timeout)
        except TimeoutError:
            await self.ws.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        self.frames_in += 1
        try:
            frame = self.codec.decode_client(data)
        except ProtocolError as exc:
            await self._refuse_hello(exc.message, exc.request_id)
            return None
        if not isinstance(frame, Hello):
            await self._refuse_hello("the first frame must be hello", getattr(frame, "id", None))
            return None
        return frame

    async def _refuse_hello(self, message: str, request_id: RequestId) -> None:
        await self._send_now(Error(ErrorCode.BAD_REQUEST.value, message, id=request_id))
        await self.ws.close(CloseCode.POLICY_VIOLATION, "first frame was not a valid hello")

    async def _attach(self, hello: Hello) -> bool:
        manager = self.server.manager
        server = self.server
        try:
            principal = server.authenticate_hello(self.ws.request, hello)
            user = server.connection_user(principal, hello)
            if user is not None:
                server.user_connections.acquire(user)
                self.counted_user = user
            session_id = await server.resolve_session(self.session_id, hello, principal)
            self.session_id = session_id
            structlog.contextvars.bind_contextvars(session_id=session_id)
            outbox = Outbox(
                self.connection_id,
                hello.role,
                manager.config.send_queue_frames,
                on_overflow=self._close_soon,
            )
            self.actor, _ = await manager.attach(session_id, outbox, hello.last_seq, hello.epoch)
            self.outbox = outbox
        except tuple(_AUTH_FAILURES) as exc:
            await self.ws.close(_AUTH_FAILURES[type(exc)], str(exc))
            return False
        except tuple(_ATTACH_FAILURES) as exc:
            code, reason = next(v for t, v in _ATTACH_FAILURES.items() if isinstance(exc, t))
            await self.ws.close(code, reason)
            return False
        return True

    # -- attached ----------------------------------------------------------------

    async def _serve(self) -> None:
        """Reads in this task (one task fewer per connection) while a writer task sends;
        whichever side closes the socket ends the other."""
        writer = asyncio.create_task(self._write(), name=f"writer:{self.connection_id}")
        writer.add_done_callback(self._writer_done)
        self.server.metrics.connections.inc()
        try:
            await self._read()
        finally:
            self.server.metrics.connections.dec()
            writer.cancel()

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        if writer.cancelled() or isinstance(writer.exception(), ConnectionClosed):
            return
        if writer.exception() is not None:
            log.error("connection writer failed", exc_info=writer.exception())
            self._close_soon(CloseRequest(CloseCode.INTERNAL_ERROR, "internal error"))

    async def _read(self) -> None:
        assert self.actor is not None and self.outbox is not None
        actor, outbox, decode = self.actor, self.outbox, self.codec.decode_client
        limiter = self.limiter
        while True:
            data = await self.ws.recv(decode=False)
            self.frames_in += 1
            if not limiter.admit():
                self._refuse_frame(data, limiter, outbox)
                continue
            actor.note_traffic()
            try:
                frame = decode(data)
                await self._dispatch(frame, actor, outbox)
            except ProtocolError as exc:
                self._push_error(exc.code, exc.message, exc.request_id)

    def _refuse_frame(self, data: bytes, limiter: FrameLimiter, outbox: Outbox) -> None:
        """A frame over the rate: not processed; ``rate_limited`` (with its ``id``), or
        close 4429 once the peer has ignored too many of those."""
        if outbox.closing is not None:
            return
        if limiter.refuse():
            log.info("rate limit persists, closing", refused=limiter.refused)
            outbox.close(CloseCode.TOO_SLOW, "rate limited")
            return
        try:
            request_id = getattr(self.codec.decode_client(data), "id", None)
        except ProtocolError as exc:
            request_id = exc.request_id
        rate = self.server.config.rate_limit
        self._push_error(ErrorCode.RATE_LIMITED, f"over {rate:g} frames/s", request_id)

    async def _dispatch(self, frame: ClientFrame, actor: SessionActor, outbox: Outbox) -> None:
        match frame:
            case PublishEvent(event=event, key=key, id=request_id):
                if isinstance(event, MessageEvent):
                    event = MessageEvent(event.message.completed())
                await self._submit(actor, outbox, Append(event, key, outbox, request_id))
            case PublishMessage(message=message, key=key, id=request_id):
                event = MessageEvent(message.completed())
                await self._submit(actor, outbox, Append(event, key, outbox, request_id))
            case HistoryRequest():
                await self._history(frame, outbox)
            case EventsRequest():
                await self._events(frame, actor, outbox)
            case StateRequest(state=state, id=request_id):
                command = SetState(SessionState(state), outbox, request_id)
                await self._submit(actor, outbox, command)
            case Ping(id=request_id):
                outbox.push(Outbound(Pong(id=request_id)))
            case Hello(id=request_id):
                raise ProtocolError(ErrorCode.BAD_REQUEST, "hello was already received", request_id)

    @staticmethod
    async def _submit(actor: SessionActor, outbox: Outbox, command: Append | SetState) -> None:
        """Posts a request whose reply the actor sends, once this connection may have
        one more in flight; waits (and so stops reading) only when it may not."""
        if outbox.in_flight < outbox.max_in_flight:
            outbox.in_flight += 1
        else:
            await outbox.reserve()
        if len(actor.inbox) < actor.inbox.limit:
            actor.post(command)
        else:
            await actor.submit(command)

    async def _history(self, request: HistoryRequest, outbox: Outbox) -> None:
        assert self.session_id is not None
        messages = await self._storage_read(
            self.server.manager.get_session_history(self.session_id), request.id
        )
        limit = min(request.limit, self.server.config.max_history_page)
        end = len(messages) if request.before is None else min(request.before, len(messages))
        start = max(0, end - limit)
        outbox.push(Outbound(History(messages[start:end], start > 0, id=request.id)))

    async def _events(self, request: EventsRequest, actor: SessionActor, outbox: Outbox) -> None:
        assert self.session_id is not None
        limit = min(request.limit, self.server.config.max_events_page)
        through = actor.published_seq  # only what is acknowledged, never an in-flight append
        stored = await self._storage_read(
            self.server.manager.read_events(self.session_id, request.after_seq, limit), request.id
        )
        records = [EventRecord(e.seq, e.ts, e.event) for e in stored if e.seq <= through]
        outbox.push(Outbound(Events(records, through, id=request.id)))

    async def _storage_read(self, read: Awaitable[T], request_id: RequestId) -> T:
        try:
            return await read
        except (SessionNotFound, SessionExpired) as exc:
            raise ProtocolError(
                ErrorCode.NOT_FOUND, f"session not found: {exc}", request_id
            ) from None
        except StorageError as exc:
            raise ProtocolError(
                ErrorCode.INTERNAL, f"storage read failed: {exc}", request_id
            ) from None

    def _push_error(self, code: ErrorCode, message: str, request_id: RequestId) -> None:
        assert self.outbox is not None
        self.outbox.push(Outbound(Error(code.value, message, id=request_id)))
        self.server.metrics.errors.labels(code=code.value).inc()

    async def _write(self) -> None:
        assert self.outbox is not None and self.actor is not None
        outbox, actor, ws, codec = self.outbox, self.actor, self.ws, self.codec
        text = codec.text
        while True:
            item = await outbox.get()
            if isinstance(item, Outbound):
                # Whatever is queued goes out in one write (outbox.send_frames).
                batch = outbox.take_frames(item, _SEND_BATCH)
                await send_frames(ws, [out.encoded(codec) for out in batch], text)
                self.frames_out += len(batch)
            elif isinstance(item, Replay):
                async for page in actor.replay(item.after, item.through):
                    await send_frames(ws, [out.encoded(codec) for out in page], text)
                    self.frames_out += len(page)
            else:
                await self._close(item)
                return

    def _close_soon(self, request: CloseRequest) -> None:
        self._closer = asyncio.create_task(self._close(request))

    async def _close(self, request: CloseRequest) -> None:
        if not self._close_counted:
            self._close_counted = True
            if request.code == CloseCode.TOO_SLOW:
                self.server.metrics.send_queue_drops.inc()
            self.server.metrics.closes.labels(code=str(int(request.code))).inc()
        await self.ws.close(request.code, request.reason)

    async def _send_now(self, frame: Error) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.codec.encode(frame), text=self.codec.text)
            self.frames_out += 1

    # -- teardown ----------------------------------------------------------------

    def _detach(self) -> None:
        if self.counted_user is not None:
            self.server.user_connections.release(self.counted_user)
            self.counted_user = None
        if self.outbox is not None and self.session_id is not None:
            self.server.manager.detach(self.session_id, self.connection_id)

    def _log_summary(self) -> None:
        log.info(
            "connection closed",
            close_code=self.ws.close_code,
            close_reason=self.ws.close_reason,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            seconds=round(time.monotonic() - self.started, 3),
        )
