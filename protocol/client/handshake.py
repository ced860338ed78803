"""Opening one connection to a session: the stream URL, the upgrade, ``hello`` and
``welcome``; and the one question the client asks the HTTP API on the same port.

:meth:`Dialer.open` either returns an attached connection with its ``welcome``, or
raises what the attempt means: :class:`.Retry` when a later attempt may succeed (no
route, a timeout, an overloaded server or gateway, a resumable close code), a typed
:class:`.ClientError` when it would not (a refusal, a closed session).
:meth:`Dialer.events_after` asks ``GET /api/v1/sessions/{id}/events`` whether the
log holds an event after a seq, and of which epoch that log is (a session that ended,
or was replaced, while the client was away); told to ask again later (a 429 or a 503
with ``Retry-After``), it does, as told.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame
from websockets.protocol import Event
from websockets.typing import Subprotocol

from ..codec import Codec
from ..errors import CloseCode
from ..frames import Error, Hello, Welcome
from ..ids import check_session_id
from ..parsed_frames import handed_on
from .errors import ClientError, Refused, Retry, close_outcome
from .keepalive import HeardConnection

STREAM_PATH: Final = "/api/v1/stream"
SESSIONS_PATH: Final = "/api/v1/sessions"
WELCOME_TIMEOUT: Final = 10.0
# HTTP statuses of a refused upgrade worth retrying (overload, restarts, proxies).
RETRY_STATUSES: Final = frozenset({408, 429, 500, 502, 503, 504})
# Seconds :meth:`Dialer.events_after` waits in all, as the ``Retry-After`` of a 429 (its
# peer's read allowance in debt, or its unread answers at their part) or of a 503 (the
# server's buffer for answers full) asks, before it gives up and says why: a client
# that resumes a long log on a busy host may well be in debt when its session ends.
RETRY_AFTER_PATIENCE: Final = 60.0


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


def events_url(base_url: str, session_id: str, after_seq: int, limit: int) -> str:
    """``GET /api/v1/sessions/{id}/events?after_seq=&limit=`` on the server of
    ``base_url`` (its WebSocket URL, as :func:`stream_url` takes it): the same host and
    port and path prefix, over http for ws and https for wss."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"URL must start with ws:// or wss://: {base_url!r}")
    prefix = parts.path.rstrip("/")
    if prefix.endswith(STREAM_PATH):
        prefix = prefix[: -len(STREAM_PATH)]
    session = urllib.parse.quote(check_session_id(session_id), safe="")
    path = f"{prefix}{SESSIONS_PATH}/{session}/events"
    query = urllib.parse.urlencode({"after_seq": after_seq, "limit": limit})
    scheme = "https" if parts.scheme == "wss" else "http"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))


def closed_outcome(exc: ConnectionClosed, closed_reason: str | None) -> ClientError | Retry:
    """What a connection that closed with ``exc`` means (see :func:`.close_outcome`)."""
    received = exc.rcvd
    if received is None:
        return close_outcome(None, str(exc), closed_reason)
    return close_outcome(received.code, received.reason, closed_reason)


TokenSource = Callable[[], Awaitable[str]]


class LogCheck(msgspec.Struct, frozen=True):
    """What :meth:`Dialer.events_after` reads of an events page: its events (at most
    one, left undecoded), the log's ``last_seq``, and the ``epoch`` of the log they are
    of (None from a server that does not say it)."""

    events: list[msgspec.Raw]
    last_seq: int
    epoch: str | None = None

    @property
    def added(self) -> bool:
        return bool(self.events)


class LettingGoConnection(HeardConnection):
    """websockets' client connection, but for two things it holds on to.

    The frame its parser parsed last: the parser keeps it (a local of its generator)
    until the next frame comes, so a client that received one big event and then waited
    would keep its payload for as long as the quiet lasts, outside ``max_queued_bytes``.
    The message is made of a new frame with the same payload, and the parser's frame is
    emptied (as the server does).

    And a close on a dead link: websockets writes the close frame, then waits for the
    socket's buffer to drain with no deadline, and only then starts its close timer. A
    client whose buffer filled on a link gone silent (publishes sent into the tunnel)
    waited in :meth:`BambooClient.close` for ever. Once a close is under way, a wait
    for room in the buffer ends at the close's deadline: websockets then drops the
    socket, as its timer would have (the server's ``server/close_bound.py`` does so)."""

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame):
            event = handed_on(event)
        super().process_event(event)

    async def drain(self) -> None:
        deadline = self.close_deadline
        if deadline is None:
            await super().drain()  # an open connection: plain back-pressure
            return
        async with asyncio.timeout_at(deadline):
            await super().drain()


@dataclass(frozen=True)
class Dialer:
    """How to reach the server: its base URL, the codec and the credentials (a token,
    or an async function that returns a fresh one, asked before every connection)."""

    base_url: str
    codec: Codec
    token: str | TokenSource | None
    open_timeout: float

    @property
    def refreshes_tokens(self) -> bool:
        return callable(self.token)

    async def current_token(self) -> str | None:
        token = self.token
        return await token() if callable(token) else token

    async def open(self, session_id: str | None, hello: Hello) -> tuple[ClientConnection, Welcome]:
        """One connection to ``session_id`` (a new session when ``None``): upgrade,
        ``hello``, ``welcome``. Raises :class:`.Retry` for failures worth retrying,
        :class:`.Refused` / :class:`.SessionEnded` / :class:`.ClientError` for the
        others."""
        token = await self.current_token()
        if token is not None:
            hello = msgspec.structs.replace(hello, token=token)
        ws = await self._upgrade(stream_url(self.base_url, session_id), token)
        try:
            welcome = await self._attach(ws, hello)
            if session_id is not None and welcome.session.id != session_id:
                # A broken (or hostile) server's, or a proxy's that crossed streams:
                # events of another session must not pass for this one's.
                reason = f"malformed welcome: session {welcome.session.id}, not {session_id}"
                raise Refused(int(CloseCode.POLICY_VIOLATION), reason)
            return ws, welcome
        except BaseException:  # cancelled too: a half-open attach must not stay open
            await ws.close()
            raise

    async def events_after(self, session_id: str, after_seq: int) -> LogCheck:
        """Whether the session's log holds an event after ``after_seq``, and which log
        that is, asked of the HTTP API on the server's port (``limit=1``) with this
        client's credentials, each request within ``open_timeout``. A 429 or 503 that
        says when to ask again (``Retry-After``) is asked again then, for
        ``RETRY_AFTER_PATIENCE`` seconds of waits in all. Raises :class:`.ClientError`
        when the answer cannot be had: no connection, a timeout, a status other than
        200 (past that patience too), a malformed body."""
        waited = 0.0
        while True:
            try:
                body = await self._get_events(session_id, after_seq)
                break
            except _AskAgain as again:
                delay = again.delay
                if waited + delay > RETRY_AFTER_PATIENCE:
                    raise ClientError(f"HTTP {again.status}") from None
            await asyncio.sleep(delay)
            waited += delay
        try:
            return msgspec.json.decode(body, type=LogCheck)
        except msgspec.DecodeError as exc:
            raise ClientError(f"malformed events page: {exc!r}") from None

    async def _get_events(self, session_id: str, after_seq: int) -> bytes:
        """The body of one ``GET …/events?after_seq=…&limit=1``; :class:`_AskAgain` for
        a 429 or 503 with ``Retry-After``, :class:`.ClientError` for another failure."""
        token = await self.current_token()
        url = events_url(self.base_url, session_id, after_seq, 1)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = self.open_timeout

        def get() -> bytes:
            request = urllib.request.Request(url, headers=headers, method="GET")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body: bytes = response.read()
                return body

        try:
            # urllib's own timeout bounds each socket operation; this bounds the whole.
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(get)
        except urllib.error.HTTPError as exc:
            with exc:
                delay = retry_after(exc.code, exc.headers.get("Retry-After"))
            if delay is not None:
                raise _AskAgain(exc.code, delay) from None
            raise ClientError(f"HTTP {exc.code}") from None
        except (OSError, TimeoutError) as exc:
            raise ClientError(f"cannot reach the server: {exc}") from None

    async def _attach(self, ws: ClientConnection, hello: Hello) -> Welcome:
        codec = self.codec
        try:
            await ws.send(codec.encode(hello), text=codec.text)
            async with asyncio.timeout(WELCOME_TIMEOUT):
                data = await ws.recv(decode=False)
            welcome = codec.decode_server(data)
        except ConnectionClosed as exc:
            # A refusal comes before any frame: no closed frame explains it.
            raise closed_outcome(exc, None) from None
        except (TimeoutError, OSError) as exc:
            raise Retry(f"no welcome: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ClientError(f"malformed frame from the server: {exc}") from None
        if not isinstance(welcome, Welcome):
            message = welcome.message if isinstance(welcome, Error) else type(welcome).__name__
            raise Refused(int(CloseCode.POLICY_VIOLATION), f"no welcome: {message}")
        return welcome

    async def _upgrade(self, url: str, token: str | None) -> ClientConnection:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return await ws_connect(
                url,
                subprotocols=[Subprotocol(self.codec.subprotocol)],
                additional_headers=headers,
                compression=None,
                create_connection=LettingGoConnection,
                open_timeout=self.open_timeout,
                ping_interval=None,  # the link's Keepalive pings: see .keepalive for why
                close_timeout=2,
                # No limit of the client's own: the server keeps its frames within its
                # --max-frame-bytes (docs/protocol.md; an event stored before it kept
                # room around events may come a little over, see Pages), which an
                # operator may set past websockets' 1 MiB default and the client is not
                # told. A lower limit here would close 1009 at such a frame and meet it
                # again at each resume: what bounds a frame is the server's limit.
                max_size=None,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in RETRY_STATUSES:
                raise Retry(f"HTTP {status}") from exc
            body = exc.response.body.decode(errors="replace").strip() if exc.response.body else ""
            raise Refused(status, http_reason(body) or f"HTTP {status}") from None
        except InvalidURI as exc:
            raise ValueError(str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise Retry(f"cannot connect: {exc}") from exc


class _AskAgain(Exception):
    """An answer that says when to ask again: its status and the seconds to wait."""

    def __init__(self, status: int, delay: float) -> None:
        super().__init__(status, delay)
        self.status = status
        self.delay = delay


def retry_after(status: int, value: str | None) -> float | None:
    """The seconds a 429 or a 503 asks to wait before the request is made again (its
    ``Retry-After``, in seconds), else None: another status, or no such header (an
    HTTP date is not sent by this server, and not waited for)."""
    if status not in (429, 503) or value is None:
        return None
    value = value.strip()
    # At least a second: a "Retry-After: 0" would have the request made again at once.
    return max(1.0, float(value)) if value.isascii() and value.isdigit() else None


def http_reason(body: str) -> str:
    """The message of the server's JSON error body, or the first line of the body."""
    try:
        decoded = msgspec.json.decode(body)
        message = decoded["error"]["message"]
        if isinstance(message, str):
            return message
    except (msgspec.DecodeError, KeyError, TypeError):
        pass
    return body.splitlines()[0][:200] if body else ""
