"""BambooClient: the reference async client, with resume and exactly-once publish built in.

The only module of ``protocol/`` that does I/O. One reader task per client demultiplexes
the server's frames: replies go to the request that waits for them (matched by ``id``),
events to the queue that :meth:`BambooClient.events` drains, presence and ``closed`` to
attributes. When the connection drops for a reason PROTOCOL.md says to resume from
(1001, 1011, 1012, 1013, 4408, 4429, or a network failure), the client reconnects to
the same session with exponential backoff and full jitter, sends ``hello`` with
``last_seq`` and ``epoch``, and resends every unanswered request in its original order
before any new one. Publishes always carry an idempotency key, so a resent publish that
the server had already stored is answered with the first ``seq`` (``duplicate``) rather
than stored twice.

Sequence checking: every ``event`` frame must carry the next ``seq`` after those seen.
Seqs the client's own publishes received (from their ``ack``) count as seen, because
the server never echoes a publisher's events back to it. An ``ack`` may arrive after
events with higher seqs, so a hole is tolerated while a publish of ours is unanswered
that could fill it; a duplicate, or a hole that no unanswered publish can explain,
raises :class:`SequenceError`. A reconnect that the server cannot resume
(``resumed: false``) is yielded by :meth:`BambooClient.events` as a :class:`Reset`, after
which checking starts again from the welcome's ``last_seq``.

Usage::

    async with await BambooClient.connect("ws://127.0.0.1:8765", "chat-1", create=True) as c:
        seq = await c.publish(AgentEvent.token("Hi"))
        async for item in c.events():
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Self

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol

from .codec import JSON, MSGPACK, Codec
from .errors import CloseCode
from .frames import (
    Ack,
    Closed,
    Error,
    EventFrame,
    Events,
    EventsRequest,
    Hello,
    History,
    HistoryRequest,
    Ping,
    Pong,
    Presence,
    PublishEvent,
    PublishMessage,
    StateRequest,
    Welcome,
)
from .ids import check_session_id
from .models import AnyAgentEvent, Message, SessionMetadata, StoredEvent

__all__ = [
    "STREAM_PATH",
    "BambooClient",
    "ClientError",
    "ConnectionLost",
    "EventPage",
    "HistoryPage",
    "Refused",
    "RequestError",
    "Reset",
    "SequenceError",
    "SessionEnded",
    "stream_url",
]

log = logging.getLogger("bamboo_session.client")

STREAM_PATH = "/api/v1/stream"
_HELLO_TIMEOUT = 10.0
# HTTP statuses of a refused upgrade worth retrying (overload, restarts, proxies).
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


# -- errors ---------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the client raises."""


class Refused(ClientError):
    """The server closed the connection (or refused the upgrade) for a reason that a
    reconnect would not fix: 1008, 1009, 4401, 4403, 4404, 4409, or an HTTP status.
    ``code`` is the close code, or the HTTP status when the upgrade was refused."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused by the server ({code}): {reason}" if reason else f"{code}")
        self.code = code
        self.reason = reason


class SessionEnded(ClientError):
    """The session was closed (``closed`` frame, close 1000 or 4409), or this client was
    closed: nothing more will come on this client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(ClientError):
    """The connection dropped and reconnecting gave up (``max_retries`` reached)."""


class SequenceError(ClientError):
    """The server sent an impossible sequence: a duplicate ``seq`` or a gap."""

    def __init__(self, message: str, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class RequestError(ClientError):
    """The server answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _Retry(Exception):
    """Internal: this connection attempt failed in a way worth retrying."""


# -- records ----------------------------------------------------------------------------


class Reset(msgspec.Struct, frozen=True):
    """Yielded by :meth:`BambooClient.events` when a (re)connect could not resume: the
    events between ``previous_last_seq`` and ``last_seq`` were not replayed (the log's
    ``epoch`` changed, they were trimmed, or ``last_seq`` was beyond the log's end).
    Reload state with :meth:`~BambooClient.history` and
    :meth:`~BambooClient.read_events`; live events continue after ``last_seq``."""

    epoch: str
    last_seq: int
    previous_epoch: str | None
    previous_last_seq: int


class HistoryPage(msgspec.Struct, frozen=True):
    messages: list[Message]
    has_more: bool


class EventPage(msgspec.Struct, frozen=True):
    """Events with ``seq > after_seq``, oldest first, and the log's ``last_seq``."""

    events: list[StoredEvent]
    last_seq: int


def stream_url(base_url: str, session_id: str | None = None) -> str:
    """The stream endpoint for ``session_id`` (a new session when ``None``) under a
    server's base URL such as ``ws://127.0.0.1:8765``. A URL that already names the
    stream endpoint is kept as it is, with ``session_id`` appended when given."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"URL must start with ws:// or wss://: {base_url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith(STREAM_PATH):
        path += STREAM_PATH
    if session_id is not None:
        path += "/" + urllib.parse.quote(check_session_id(session_id), safe="")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


# -- internals ----------------------------------------------------------------------------


class _Pending:
    """A request waiting for its reply; resent after a reconnect until answered."""

    __slots__ = ("frame", "future", "is_publish", "sent_on")

    def __init__(self, frame: Any, future: asyncio.Future[Any], is_publish: bool) -> None:
        self.frame = frame
        self.future = future
        self.is_publish = is_publish
        self.sent_on = -1  # the connection generation it was last sent on


class _Sequence:
    """Checks that seqs arrive with no gap and no duplicate.

    ``contiguous``: every seq up to here was seen; ``above``: seqs seen beyond it (the
    holes below them belong to publishes of ours whose ``ack`` has not arrived yet)."""

    def __init__(self, last_seq: int) -> None:
        self.reset(last_seq)

    def reset(self, last_seq: int) -> None:
        self.contiguous = last_seq
        self.highest = last_seq
        self.above: set[int] = set()

    @property
    def holes(self) -> int:
        return self.highest - self.contiguous - len(self.above)

    def see(self, seq: int, what: str) -> None:
        if seq <= self.contiguous or seq in self.above:
            raise SequenceError(
                f"duplicate {what} seq {seq} (already seen through {self.highest})",
                self.contiguous + 1,
                seq,
            )
        if seq == self.contiguous + 1:
            self.contiguous = seq
            while self.contiguous + 1 in self.above:
                self.contiguous += 1
                self.above.discard(self.contiguous)
        else:
            self.above.add(seq)
        self.highest = max(self.highest, seq)

    def is_hole(self, seq: int) -> bool:
        return self.contiguous < seq < self.highest and seq not in self.above

    def check(self, unanswered_publishes: int) -> None:
        """A hole that none of our unanswered publishes can fill is a gap."""
        if self.holes > unanswered_publishes:
            missing = next(
                s for s in range(self.contiguous + 1, self.highest) if s not in self.above
            )
            raise SequenceError(
                f"gap: seq {missing} never arrived (seen through {self.highest})",
                missing,
                self.highest,
            )


_END = object()  # queued after the last item of events()


class BambooClient:
    """A connection to one session, kept alive across drops. Create with
    :meth:`connect`; use as ``async with``; end with :meth:`close`."""

    def __init__(
        self,
        url: str,
        *,
        session_id: str | None,
        create: bool,
        user_id: str | None,
        title: str | None,
        token: str | None,
        role: Literal["client", "agent"],
        codec: Codec,
        last_seq: int | None,
        epoch: str | None,
        reconnect: bool,
        max_retries: int | None,
        backoff_initial: float,
        backoff_max: float,
        open_timeout: float,
        request_timeout: float | None,
        receive_events: bool,
    ) -> None:
        self._base_url = url
        self._session_id = session_id
        self._create = create
        self._user_id = user_id
        self._title = title
        self._token = token
        self._role = role
        self._codec = codec
        self._reconnect = reconnect
        self._max_retries = max_retries
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._open_timeout = open_timeout
        self._request_timeout = request_timeout
        self._receive_events = receive_events
        self._resume_from = last_seq  # what the first hello asks to resume from
        self._epoch: str | None = epoch
        self._seq = _Sequence(last_seq or 0)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._ready = False  # connected, and every earlier request resent
        self._runner: asyncio.Task[None] | None = None
        self._failure: ClientError | None = None  # why this client is finished
        self.connection_id: str | None = None
        self.session: SessionMetadata | None = None  # as of the last welcome
        self.connections = 0  # connections attached to the session (from presence)
        self.closed_reason: str | None = None  # from the server's closed frame
        self.reconnects = 0  # successful reconnects so far
        self.resent = 0  # requests sent again after a reconnect

    # -- opening and closing ------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        session_id: str | None = None,
        *,
        create: bool = False,
        user_id: str | None = None,
        title: str | None = None,
        token: str | None = None,
        role: Literal["client", "agent"] = "client",
        codec: Literal["json", "msgpack"] | Codec = "json",
        last_seq: int | None = None,
        epoch: str | None = None,
        reconnect: bool = True,
        max_retries: int | None = None,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
        open_timeout: float = 10.0,
        request_timeout: float | None = None,
        receive_events: bool = True,
    ) -> Self:
        """Attach to ``session_id`` on the server at ``url`` (``ws://host:port``), or to a
        new session when ``session_id`` is ``None``.

        - ``create``: create ``session_id`` if it does not exist (get-or-create);
          ``user_id`` and ``title`` apply only to a session created here.
        - ``last_seq`` (+ ``epoch``): resume from there, e.g. a position saved earlier;
          ``last_seq=0`` replays the whole retained log. Without it, live events only.
        - ``reconnect``: resume on its own after a drop; ``max_retries`` consecutive
          failed attempts (``None``: no limit) end in :class:`ConnectionLost`.
        - ``request_timeout``: seconds a request may wait for its reply, across
          reconnects (``None``: no limit).
        - ``receive_events=False``: a publish-only client; events are checked for
          sequence but not queued, so nothing piles up unread.

        The first connection is not retried: a wrong URL, a refused token or a missing
        session fails here, with :class:`Refused`, ``OSError`` or ``TimeoutError``.
        """
        if isinstance(codec, str):
            codecs = {"json": JSON, "msgpack": MSGPACK}
            if codec not in codecs:
                raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
            codec = codecs[codec]
        if session_id is not None:
            check_session_id(session_id)
        stream_url(url)  # refuse a bad URL before any I/O
        client = cls(
            url,
            session_id=session_id,
            create=create,
            user_id=user_id,
            title=title,
            token=token,
            role=role,
            codec=codec,
            last_seq=last_seq,
            epoch=epoch,
            reconnect=reconnect,
            max_retries=max_retries,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            open_timeout=open_timeout,
            request_timeout=request_timeout,
            receive_events=receive_events,
        )
        try:
            ws = await client._open()
        except _Retry as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError | TimeoutError):
                raise cause from None
            raise ConnectionLost(str(exc)) from cause
        client._ws = ws  # close() before the runner first runs must still close it
        client._runner = asyncio.create_task(client._run(ws), name="bamboo-client")
        return client

    async def close(self) -> None:
        """Close the connection (1000) and stop: waiting requests fail with
        :class:`SessionEnded`, and :meth:`events` ends. Safe to call twice."""
        if self._failure is None:
            self._finish(SessionEnded("client closed"))
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state ----------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        assert self._session_id is not None  # known once connect() returned
        return self._session_id

    @property
    def epoch(self) -> str | None:
        return self._epoch

    @property
    def last_seq(self) -> int:
        """The highest seq seen, as an event or as our own publish's ack: where a later
        :meth:`connect` (``last_seq=..., epoch=...``) resumes from."""
        return self._seq.highest

    @property
    def connected(self) -> bool:
        return self._ready

    @property
    def finished(self) -> bool:
        return self._failure is not None

    # -- requests ---------------------------------------------------------------------------

    async def publish(self, event: AnyAgentEvent, key: str | None = None) -> int:
        """Append ``event`` to the session's log; its ``seq``. ``key`` (an idempotency
        key, generated when not given) makes retries safe: the same key within the
        server's window returns the first ``seq`` instead of appending again."""
        request_id = next(self._ids)
        frame = PublishEvent(event, id=request_id, key=key or uuid.uuid4().hex)
        reply: Ack = await self._request(request_id, frame, is_publish=True)
        return reply.seq

    async def send_message(self, message: Message, key: str | None = None) -> int:
        """Append ``message`` to the history (and as a ``message`` event to the log);
        its ``seq``. Idempotent like :meth:`publish`."""
        request_id = next(self._ids)
        frame = PublishMessage(message, id=request_id, key=key or uuid.uuid4().hex)
        reply: Ack = await self._request(request_id, frame, is_publish=True)
        return reply.seq

    async def history(self, limit: int = 100, before: int | None = None) -> HistoryPage:
        """The newest ``limit`` messages before index ``before`` (default: the end)."""
        request_id = next(self._ids)
        frame = HistoryRequest(id=request_id, limit=limit, before=before)
        reply: History = await self._request(request_id, frame)
        return HistoryPage(reply.messages, reply.has_more)

    async def read_events(self, after_seq: int = 0, limit: int = 1000) -> EventPage:
        """Up to ``limit`` events of the log with ``seq > after_seq``, oldest first."""
        request_id = next(self._ids)
        frame = EventsRequest(id=request_id, after_seq=after_seq, limit=limit)
        reply: Events = await self._request(request_id, frame)
        events = [StoredEvent(r.seq, r.ts, r.event) for r in reply.events]  # type: ignore[arg-type]
        return EventPage(events, reply.last_seq)

    async def read_all_events(self, after_seq: int = 0, page: int = 1000) -> list[StoredEvent]:
        """Every event of the log after ``after_seq``, read page by page."""
        events: list[StoredEvent] = []
        while True:
            got = await self.read_events(after_seq, page)
            events.extend(got.events)
            if not got.events or got.events[-1].seq >= got.last_seq:
                return events
            after_seq = got.events[-1].seq

    async def set_state(self, state: Literal["active", "idle", "closed"]) -> int:
        """Ask for a session state; ``closed`` ends the session for every peer."""
        request_id = next(self._ids)
        reply: Ack = await self._request(request_id, StateRequest(state, id=request_id))
        return reply.seq

    async def ping(self) -> float:
        """A round trip to the session's server, in seconds."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        request_id = next(self._ids)
        await self._request(request_id, Ping(id=request_id))
        return loop.time() - started

    async def events(self) -> AsyncIterator[StoredEvent | Reset]:
        """The session's events as they arrive (``StoredEvent`` with ``seq``, ``ts`` and a
        typed ``event``), resuming across drops with no gap and no duplicate, and a
        :class:`Reset` when a reconnect could not resume. Ends when the session is
        closed or :meth:`close` is called; raises :class:`SequenceError`,
        :class:`Refused` or :class:`ConnectionLost` when the stream cannot go on.

        Our own publishes are not in it: the server sends events to every peer but
        their publisher. Iterate from one task at a time."""
        while True:
            item = await self._events.get()
            if item is _END:
                self._events.put_nowait(_END)  # for any later iteration
                failure = self._failure
                if isinstance(failure, SessionEnded):
                    return
                assert failure is not None
                raise failure
            yield item

    # -- request plumbing -------------------------------------------------------------------

    async def _request(self, request_id: int, frame: Any, is_publish: bool = False) -> Any:
        if self._failure is not None:
            raise self._failure
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = _Pending(frame, future, is_publish)
        self._pending[request_id] = pending
        try:
            if self._ready and self._ws is not None:
                # Sent now; if the connection drops first, the reconnect resends it.
                pending.sent_on = self._generation
                with contextlib.suppress(ConnectionClosed):
                    await self._ws.send(self._codec.encode(frame), text=self._codec.text)
            return await asyncio.wait_for(asyncio.shield(future), self._request_timeout)
        finally:
            # A publish nobody waits for any more (cancelled, timed out) stays pending
            # until answered: it may already be stored, and its seq must be accounted for.
            if not is_publish or future.done():
                self._pending.pop(request_id, None)

    def _answer(self, request_id: Any, result: Any = None, error: Exception | None = None) -> None:
        pending = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if pending is None:
            log.debug("reply to no waiting request: %r", request_id)
            return
        if not pending.future.done():
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(result)
        if pending.is_publish:
            self._check_sequence()

    def _unanswered_publishes(self) -> int:
        return sum(1 for p in self._pending.values() if p.is_publish)

    def _check_sequence(self) -> None:
        try:
            self._seq.check(self._unanswered_publishes())
        except SequenceError as exc:
            self._finish(exc)

    # -- connection -----------------------------------------------------------------------

    def _hello(self) -> Hello:
        first = self._generation == 0
        last_seq = self._resume_from if first else self._seq.highest
        epoch = self._epoch if last_seq is not None else None
        return Hello(
            token=self._token,
            user_id=self._user_id,
            title=self._title,
            create=self._create and first,  # a reconnect never creates a session
            last_seq=last_seq,
            epoch=epoch,
            role=self._role,
        )

    async def _open(self) -> ClientConnection:
        """One connection: upgrade, hello, welcome. Raises :class:`_Retry` for failures
        worth retrying, :class:`Refused` / :class:`SessionEnded` for the others."""
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else None
        url = stream_url(self._base_url, self._session_id)
        try:
            ws = await ws_connect(
                url,
                subprotocols=[Subprotocol(self._codec.subprotocol)],
                additional_headers=headers,
                compression=None,
                open_timeout=self._open_timeout,
                close_timeout=2,
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in _RETRY_STATUSES:
                raise _Retry(f"HTTP {status}") from exc
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            raise Refused(status, _http_reason(body) or f"HTTP {status}") from None
        except InvalidURI as exc:
            raise ValueError(str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _Retry(f"cannot connect: {exc}") from exc
        try:
            await ws.send(self._codec.encode(self._hello()), text=self._codec.text)
            data = await asyncio.wait_for(ws.recv(decode=False), _HELLO_TIMEOUT)
            welcome = self._codec.decode_server(data)
        except ConnectionClosed as exc:
            await ws.close()
            raise _close_error(exc, self.closed_reason) from None
        except (TimeoutError, OSError) as exc:
            await ws.close()
            raise _Retry(f"no welcome: {exc}") from exc
        except msgspec.DecodeError as exc:
            await ws.close()
            raise ClientError(f"malformed frame from the server: {exc}") from None
        if not isinstance(welcome, Welcome):
            await ws.close()
            message = welcome.message if isinstance(welcome, Error) else type(welcome).__name__
            raise Refused(int(CloseCode.POLICY_VIOLATION), f"no welcome: {message}")
        self._welcomed(welcome)
        return ws

    def _welcomed(self, welcome: Welcome) -> None:
        asked_to_resume = self._generation > 0 or self._resume_from is not None
        previous_epoch, previous_last_seq = self._epoch, self._seq.highest
        self._session_id = welcome.session.id
        self.session = welcome.session
        self.connection_id = welcome.connection_id
        self.connections = welcome.session.connections
        self.closed_reason = None
        self._epoch = welcome.epoch
        if not asked_to_resume:
            self._seq.reset(welcome.last_seq)  # live events only, from here
        elif not welcome.resumed:
            self._seq.reset(welcome.last_seq)
            reset = Reset(welcome.epoch, welcome.last_seq, previous_epoch, previous_last_seq)
            if self._receive_events:
                self._events.put_nowait(reset)
            log.info("could not resume from seq %d: %r", previous_last_seq, reset)

    async def _run(self, ws: ClientConnection) -> None:
        """The client's one task: read a connection until it drops, then reconnect."""
        attempt = 0
        try:
            while True:
                self._ws = ws
                self._generation += 1
                error = await self._serve(ws)
                self._ready = False
                self._ws = None
                if error is None:
                    return  # finished (closed, ended or a sequence error)
                if not self._reconnect:
                    self._finish(ConnectionLost(f"connection lost: {error}"))
                    return
                log.info("connection lost (%s); reconnecting", error)
                while True:
                    if self._max_retries is not None and attempt >= self._max_retries:
                        self._finish(ConnectionLost(f"gave up after {attempt} attempts: {error}"))
                        return
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    try:
                        ws = await self._open()
                        break
                    except _Retry as exc:
                        error = exc
                attempt = 0
                self.reconnects += 1
        except ClientError as exc:
            self._finish(exc)
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("client failed")
            self._finish(ClientError(f"client failed: {exc!r}"))

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)]; the first retry
        waits at least a little, so a closing server is not hammered."""
        ceiling = min(self._backoff_max, self._backoff_initial * 2**attempt)
        return random.uniform(ceiling / 2 if attempt == 0 else 0, ceiling)

    async def _serve(self, ws: ClientConnection) -> _Retry | None:
        """Read ``ws`` while resending what is unanswered; the error to reconnect after,
        or ``None`` when the client is finished."""
        reader = asyncio.create_task(self._read(ws))
        with contextlib.suppress(ConnectionClosed):  # the reader sees why, below
            await self._resend(ws)
        try:
            await reader
        except ConnectionClosed as exc:
            error = _close_error(exc, self.closed_reason)
            if isinstance(error, _Retry):
                return error
            self._finish(error)
        except (msgspec.DecodeError, ClientError) as exc:
            self._finish(exc if isinstance(exc, ClientError) else ClientError(str(exc)))
            await ws.close()
        return None

    async def _resend(self, ws: ClientConnection) -> None:
        """Send every request not yet sent on this connection, oldest first, until none
        is left; only then may new requests go out directly."""
        generation = self._generation
        while True:
            unsent = [(i, p) for i, p in sorted(self._pending.items()) if p.sent_on != generation]
            if not unsent:
                break
            for _, pending in unsent:
                if pending.sent_on >= 0:
                    self.resent += 1
                pending.sent_on = generation
                await ws.send(self._codec.encode(pending.frame), text=self._codec.text)
        self._ready = True

    async def _read(self, ws: ClientConnection) -> None:
        decode = self._codec.decode_server
        while True:
            frame = decode(await ws.recv(decode=False))
            match frame:
                case EventFrame(seq=seq, ts=ts, event=event):
                    self._seq.see(seq, "event")
                    self._seq.check(self._unanswered_publishes())
                    if self._receive_events:
                        self._events.put_nowait(StoredEvent(seq, ts, event))  # type: ignore[arg-type]
                case Ack(id=request_id, seq=seq, duplicate=duplicate):
                    pending = self._pending.get(request_id) if isinstance(request_id, int) else None
                    if pending is not None and pending.is_publish:
                        if not duplicate:
                            self._seq.see(seq, "ack")
                        elif self._seq.is_hole(seq):
                            # Stored before a drop that lost its ack: it fills the hole.
                            self._seq.see(seq, "ack")
                    self._answer(request_id, frame)
                case History() | Events() | Pong():
                    self._answer(frame.id, frame)
                case Error(id=request_id, code=code, message=message):
                    if request_id is None:
                        log.warning("error from the server: %s: %s", code, message)
                    else:
                        self._answer(request_id, error=RequestError(code, message))
                case Presence(connections=connections):
                    self.connections = connections
                case Closed(reason=reason):
                    self.closed_reason = reason
                case Welcome():
                    log.warning("unexpected second welcome ignored")
            if self._failure is not None:
                raise self._failure

    def _finish(self, failure: ClientError) -> None:
        """End this client: fail what waits, end events()."""
        if self._failure is not None:
            return
        self._failure = failure
        self._ready = False
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(failure)
                pending.future.exception()  # retrieved: no warning if nobody awaits it
        self._pending.clear()
        self._events.put_nowait(_END)
        ws = self._ws
        if ws is not None and not isinstance(failure, SessionEnded):
            asyncio.get_running_loop().create_task(ws.close())


def _close_error(exc: ConnectionClosed, closed_reason: str | None) -> ClientError | _Retry:
    """What a closed connection means: retry (resume), or the error that ends it."""
    received = exc.rcvd
    if received is None:
        return _Retry(f"connection dropped: {exc}")
    code, reason = received.code, received.reason
    try:
        close_code = CloseCode(code)
    except ValueError:
        return Refused(code, reason)
    if close_code.should_resume:
        return _Retry(f"closed {code} {reason}".strip())
    if close_code in (CloseCode.NORMAL, CloseCode.SESSION_CLOSED):
        return SessionEnded(closed_reason or reason or "session closed")
    return Refused(code, reason)


def _http_reason(body: str) -> str:
    """The message of the server's JSON error body, or the first line of the body."""
    try:
        decoded = msgspec.json.decode(body)
        message = decoded["error"]["message"]
        if isinstance(message, str):
            return message
    except (msgspec.DecodeError, KeyError, TypeError):
        pass
    return body.splitlines()[0][:200] if body else ""
