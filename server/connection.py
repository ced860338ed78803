"""One WebSocket connection: handshake (``hello``), then a reader and a writer task.

The reader decodes frames and posts commands to the session's actor (waiting when the
actor's inbox is full, which pushes back on the peer's socket); the writer drains the
connection's outbox to the socket. Failures become ``error`` frames or close codes as
server/failures.py says; an unexpected exception closes with 1011 and tells the peer
nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

import structlog
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request

from bamboo_session.persistence.base import StorageError
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import CloseCode, ErrorCode, ProtocolError
from bamboo_session.protocol.frames import (
    ClientFrame,
    Error,
    EventsRequest,
    Hello,
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

from .actor import SessionActor
from .auth import Forbidden, Unauthorized
from .commands import Append, SetState
from .failures import ServerBusy, failure_of, request_error
from .flush import WebSocketSink
from .limits import FrameLimiter, TooManyConnections
from .outbox import CloseRequest, Outbound, Outbox, Replay, send_frames
from .pages import events_reply, history_reply
from .quotas import CreatingTooFast, TooManySessions, creator_key
from .services import Services

log = structlog.get_logger("bamboo_session.connection")
T = TypeVar("T")
_SEND_BATCH = 256  # frames written to the socket at once, at most

# What attaching may fail with; each closes the connection as server/failures.py says.
_ATTACH_FAILURES = (
    StorageError,
    ServerBusy,
    TooManyConnections,
    TooManySessions,
    CreatingTooFast,
    Unauthorized,
    Forbidden,
)


class Connection:
    """A peer attached (or attaching) to one session over one WebSocket."""

    __slots__ = (
        "_closer",
        "_expiry",
        "_overflow_counted",
        "actor",
        "codec",
        "connection_id",
        "counted_user",
        "frames_in",
        "frames_out",
        "limiter",
        "outbox",
        "services",
        "session_id",
        "started",
        "ws",
    )

    def __init__(
        self, services: Services, ws: ServerConnection, codec: Codec, session_id: str | None
    ) -> None:
        self.services = services
        self.ws = ws
        self.codec = codec
        self.session_id = session_id
        self.connection_id = new_connection_id()
        self.actor: SessionActor | None = None
        self.outbox: Outbox | None = None
        self._overflow_counted = False
        self._closer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.frames_in = 0
        self.frames_out = 0
        self.started = time.monotonic()
        config = services.config
        self.limiter = FrameLimiter(
            config.rate_limit, config.rate_limit_burst, config.rate_limit_refusals
        )
        self.counted_user: str | None = None  # counted in services.user_connections

    async def run(self) -> None:
        # Every log line of this connection's tasks carries its ids (task-local context).
        structlog.contextvars.bind_contextvars(
            connection_id=self.connection_id, session_id=self.session_id
        )
        self.services.metrics.connections_total.inc()
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
            self._count_close()
            self._log_summary()

    # -- handshake -------------------------------------------------------------

    async def _read_hello(self) -> Hello | None:
        timeout = self.services.config.hello_timeout
        try:
            # Text frames arrive as str, checked as UTF-8 (else websockets closes 1007).
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            await self.ws.close(CloseCode.HELLO_TIMEOUT, "no hello in time")
            return None
        self.frames_in += 1
        try:
            frame = self.codec.decode_frame(data)
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
        services = self.services
        manager = services.manager
        try:
            request = self.ws.request
            authorization = request.headers.get("Authorization") if request else None
            if request is not None:
                # Nothing reads the handshake's headers past here, and websockets would
                # keep them, the request's and the response's, for as long as the
                # connection stays open: about 3.5 KiB of an idle connection. (A
                # request stays: websockets reads None as "no handshake yet".)
                self.ws.request = Request(request.path, Headers())
                self.ws.response = None
            principal = services.access.authenticate_hello(hello, authorization)
            user = services.access.connection_user(principal, hello)
            if user is not None:
                services.user_connections.acquire(user)
                self.counted_user = user
            creator = creator_key(principal.sub if principal else None, self._peer_address())
            admission = services.quotas.admission(creator)
            session_id = await manager.resolve_session(self.session_id, hello, principal, admission)
            self.session_id = session_id
            structlog.contextvars.bind_contextvars(session_id=session_id)
            outbox = Outbox(
                self.connection_id,
                hello.role,
                manager.config.send_queue_frames,
                on_close=self._on_outbox_closed,
                max_bytes=manager.config.send_queue_bytes,
                codec=self.codec,
                budget=manager.budget,
            )
            outbox.sink = WebSocketSink(self.ws, self._framed, self._count_out)
            outbox.flusher = services.flusher
            self.actor, _ = await manager.attach(session_id, outbox, hello.last_seq, hello.epoch)
            self.outbox = outbox
            if principal is not None and principal.valid_until is not None:
                self._close_at_expiry(principal.valid_until, outbox)
        except _ATTACH_FAILURES as exc:
            failure = failure_of(exc)
            await self.ws.close(failure.close, failure.reason)
            return False
        except ProtocolError as exc:  # a field of the hello over its limit
            await self._refuse_hello(exc.message, hello.id)
            return False
        return True

    def _close_at_expiry(self, valid_until: float, outbox: Outbox) -> None:
        """A connection does not outlive its token: at expiry it is closed with 4401
        (after what is queued), and the client resumes with a fresh token."""
        delay = max(0.0, valid_until - time.time())
        self._expiry = asyncio.get_running_loop().call_later(
            delay, outbox.close, CloseCode.UNAUTHORIZED, "token expired"
        )

    def _peer_address(self) -> str | None:
        address = self.ws.remote_address
        return str(address[0]) if address else None

    # -- attached ----------------------------------------------------------------

    async def _serve(self) -> None:
        """Reads in this task (one task fewer per connection) while a writer task sends;
        whichever side closes the socket ends the other."""
        writer = asyncio.create_task(self._write(), name=f"writer:{self.connection_id}")
        writer.add_done_callback(self._writer_done)
        self.services.metrics.connections.inc()
        try:
            await self._read()
        finally:
            self.services.metrics.connections.dec()
            writer.cancel()

    def _writer_done(self, writer: asyncio.Task[None]) -> None:
        if writer.cancelled() or isinstance(writer.exception(), ConnectionClosed):
            return
        if writer.exception() is not None:
            log.error("connection writer failed", exc_info=writer.exception())
            self._close_soon(CloseRequest(CloseCode.INTERNAL_ERROR, "internal error"))

    async def _read(self) -> None:
        assert self.actor is not None and self.outbox is not None
        actor, outbox, decode = self.actor, self.outbox, self.codec.decode_frame
        limiter = self.limiter
        while True:
            data = await self.ws.recv()
            self.frames_in += 1
            if outbox.closing is not None:
                continue  # closing: read on (for the closing handshake), answer nothing
            if not limiter.admit():
                self._refuse_frame(data, limiter, outbox)
                continue
            actor.note_traffic()
            try:
                frame = decode(data)
                await self._dispatch(frame, actor, outbox, len(data))
            except ProtocolError as exc:
                self._push_error(exc.code, exc.message, exc.request_id)

    def _refuse_frame(self, data: bytes | str, limiter: FrameLimiter, outbox: Outbox) -> None:
        """A frame over the rate: not processed; ``rate_limited`` (with its ``id``), or
        close 4429 once the peer has ignored too many of those."""
        if outbox.closing is not None:
            return
        if limiter.refuse():
            log.info("rate limit persists, closing", refused=limiter.refused)
            outbox.close(CloseCode.TOO_SLOW, "rate limited")
            return
        try:
            request_id = getattr(self.codec.decode_frame(data), "id", None)
        except ProtocolError as exc:
            request_id = exc.request_id
        rate = self.services.config.rate_limit
        self._push_error(ErrorCode.RATE_LIMITED, f"over {rate:g} frames/s", request_id)

    async def _dispatch(
        self, frame: ClientFrame, actor: SessionActor, outbox: Outbox, size: int
    ) -> None:
        match frame:
            case PublishEvent(event=event, key=key, id=request_id):
                if isinstance(event, MessageEvent):
                    event = MessageEvent(event.message.completed())
                append = Append(event, key, outbox, request_id, None, time.monotonic(), size)
                await self._submit(actor, outbox, append)
            case PublishMessage(message=message, key=key, id=request_id):
                event = MessageEvent(message.completed())
                append = Append(event, key, outbox, request_id, None, time.monotonic(), size)
                await self._submit(actor, outbox, append)
            case HistoryRequest():
                await self._history(frame, outbox)
            case EventsRequest():
                await self._events(frame, outbox)
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
        if actor.inbox.has_room():
            actor.post(command)
        else:
            await actor.submit(command)

    async def _history(self, request: HistoryRequest, outbox: Outbox) -> None:
        assert self.session_id is not None
        config, storage = self.services.config, self.services.manager.storage
        read = history_reply(
            storage, self.session_id, request, config.max_history_page, config.max_page_bytes
        )
        async with self.services.page_reads:
            reply = await self._storage_read(read, request.id)
            outbox.push(Outbound.reply(reply, self.codec))

    async def _events(self, request: EventsRequest, outbox: Outbox) -> None:
        assert self.session_id is not None
        config, storage = self.services.config, self.services.manager.storage
        read = events_reply(
            storage, self.session_id, request, config.max_events_page, config.max_page_bytes
        )
        async with self.services.page_reads:
            reply = await self._storage_read(read, request.id)
            outbox.push(Outbound.reply(reply, self.codec))

    async def _storage_read(self, read: Awaitable[T], request_id: RequestId) -> T:
        try:
            return await read
        except StorageError as exc:
            raise request_error(exc, request_id) from None

    def _push_error(self, code: ErrorCode, message: str, request_id: RequestId) -> None:
        assert self.outbox is not None
        self.outbox.push(Outbound(Error(code.value, message, id=request_id)))
        self.services.metrics.errors.labels(code=code.value).inc()

    async def _write(self) -> None:
        """Sends what the flusher leaves to this task (server/flush.py): frames that must
        wait for room in the socket's buffer, replays, and the close."""
        assert self.outbox is not None and self.actor is not None
        outbox, actor, ws, codec = self.outbox, self.actor, self.ws, self.codec
        while True:
            item = await outbox.get()
            if isinstance(item, Outbound):
                # Whatever is queued goes out in one write (outbox.send_frames).
                batch = outbox.take_frames(item, _SEND_BATCH)
                # Not held while the next get() waits: on an idle connection that
                # would be its welcome frame, for as long as it stays open.
                del item
                await send_frames(ws, [out.framed(codec) for out in batch])
                self.frames_out += len(batch)
                del batch
            elif isinstance(item, Replay):
                async for page in actor.replay(item.after, item.through):
                    await send_frames(ws, [out.framed(codec) for out in page])
                    self.frames_out += len(page)
            else:
                await self._close(item)
                return

    def _framed(self, out: Outbound) -> bytes:
        return out.framed(self.codec)

    def _count_out(self, frames: int) -> None:
        self.frames_out += frames

    def _on_outbox_closed(self, request: CloseRequest) -> None:
        if self.ws.close_code is not None:
            return  # already closed: the peer left first (a detach)
        if request.overflow:
            self._close_soon(request)
        else:
            # The writer sends what is queued, then closes; should the peer stop
            # reading meanwhile, the close happens from outside the stuck writer.
            grace = self.services.config.close_timeout
            asyncio.get_running_loop().call_later(grace, self._close_soon, request)

    def _close_soon(self, request: CloseRequest) -> None:
        if self._closer is None and self.ws.close_code is None:
            self._closer = asyncio.create_task(self._close(request))

    async def _close(self, request: CloseRequest) -> None:
        if request.overflow and not self._overflow_counted:
            self._overflow_counted = True
            self.services.metrics.send_queue_drops.inc()
        await self.ws.close(request.code, request.reason)

    async def _send_now(self, frame: Error) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(self.codec.encode(frame), text=self.codec.text)
            self.frames_out += 1

    # -- teardown ----------------------------------------------------------------

    def _detach(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self.outbox is not None:
            self.outbox.discard()  # what was never sent holds no budget
        if self.counted_user is not None:
            self.services.user_connections.release(self.counted_user)
            self.counted_user = None
        if self.outbox is not None and self.session_id is not None:
            self.services.manager.detach(self.session_id, self.connection_id)

    def _count_close(self) -> None:
        """Every close the server started, by code: refusals during the handshake
        (4401, 4403, 4404, 4408, 1008, 4429, 1013) as well as later ones."""
        protocol = self.ws.protocol
        sent = protocol.close_sent
        if sent is not None and not protocol.close_rcvd_then_sent:
            self.services.metrics.closes.labels(code=str(sent.code)).inc()

    def _log_summary(self) -> None:
        log.info(
            "connection closed",
            close_code=self.ws.close_code,
            close_reason=self.ws.close_reason,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            seconds=round(time.monotonic() - self.started, 3),
        )
