"""BambooClient: the public face of the reference client, one connection to one session.

It opens and closes the connection, says what the client knows of the session, and
yields the session's events; its requests (publishes and reads) are
:class:`.SessionRequests`', its base class. Keeping the connection up is
:class:`.Link`'s job, knowing the session :class:`.ClientState`'s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Self

from ..codec import JSON, MSGPACK, Codec
from ..frames import Hello
from ..ids import check_session_id
from ..models import SessionMetadata, StoredEvent
from .errors import ConnectionLost, Retry, SessionEnded
from .feed import END, MAX_QUEUED_BYTES, MAX_QUEUED_EVENTS, EventFeed
from .handshake import Dialer, TokenSource, stream_url
from .keepalive import PING_INTERVAL, PING_TIMEOUT, Keepalive
from .link import Link
from .reconnect import ReconnectPolicy
from .requests import SessionRequests
from .results import Reset
from .state import ClientState

_CODECS = {"json": JSON, "msgpack": MSGPACK}


class BambooClient(SessionRequests):
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
        token: str | TokenSource | None,
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
        ping_interval: float | None,
        ping_timeout: float | None,
        receive_events: bool,
        max_queued_events: int,
        max_queued_bytes: int,
    ) -> None:
        self._base_url = url
        first_hello = Hello(
            token=None,  # the Dialer puts the current token in every hello
            user_id=user_id,
            title=title,
            create=create,
            last_seq=last_seq,
            epoch=epoch if last_seq is not None else None,
            role=role,
        )
        feed = EventFeed(max_queued_events, max_queued_bytes)
        self._state = ClientState(first_hello, session_id, receive_events, feed)
        self._link = Link(
            self._state,
            Dialer(url, codec, token, open_timeout),
            ReconnectPolicy(reconnect, max_retries, backoff_initial, backoff_max),
            request_timeout,
            Keepalive(ping_interval, ping_timeout),
        )

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
        token: str | TokenSource | None = None,
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
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        receive_events: bool = True,
        max_queued_events: int = MAX_QUEUED_EVENTS,
        max_queued_bytes: int = MAX_QUEUED_BYTES,
    ) -> Self:
        """Attach to ``session_id`` on the server at ``url`` (``ws://host:port``), or to a
        new session when ``session_id`` is ``None``.

        - ``create``: create ``session_id`` if it does not exist (get-or-create);
          ``user_id`` and ``title`` apply only to a session created here.
        - ``last_seq`` (+ ``epoch``): resume from there, e.g. a position saved earlier;
          ``last_seq=0`` replays the whole retained log. Without it, live events only.
        - ``reconnect``: resume on its own after a drop; ``max_retries`` consecutive
          failed attempts (``None``: no limit) end in :class:`ConnectionLost`.
        - ``backoff_initial`` (0.1) and ``backoff_max`` (5): seconds before each
          attempt, drawn with full jitter under a ceiling that doubles with each failed
          attempt, from ``backoff_initial`` up to ``backoff_max`` (the first wait at
          least half of ``backoff_initial``). A connection that was welcomed and then
          brought an event new to this client or an ack of one of its publishes, or
          held 10 s, was a recovery: after it the waits start again from the first,
          and ``max_retries`` counts from 0, however soon it dropped. One welcomed
          and dropped with nothing new (a server that closes each connection at once)
          is a failed attempt like a refused one.
        - ``open_timeout``: seconds for the upgrade, and for the one HTTP request that
          asks whether events were appended to a session that ended while this client
          was away (see :meth:`events`; asked again as a 429 or a 503 with
          ``Retry-After`` says, for a minute of such waits at most).
        - ``request_timeout``: seconds a request may wait for its reply, across
          reconnects (``None``: no limit).
        - ``ping_interval`` (20) and ``ping_timeout`` (20): seconds between the
          client's Pings, and for each Pong or any other byte. A connection that goes
          silent (no FIN, no RST: a phone in a tunnel, a NAT that forgot it) is found
          dead within ``ping_interval + ping_timeout`` (40 s) and dropped, then resumed
          like any other drop: from ``last_seq``, unanswered requests resent once. ``None``
          turns Pings off (a silent link is then never found by a client that only
          reads, and in some 15 minutes of the kernel's retries by one that writes),
          or the Pong's limit (Pings only keep NATs awake). A Pong is read with the
          events: an application that leaves the events queue full that long may have
          its connection dropped so too, and resumed once it has read the queue down,
          with nothing lost (see :mod:`.keepalive`). Each is a number above 0 or
          ``None``: 0, a negative or NaN is a ``ValueError``, anything else (a string,
          a bool) a ``TypeError``, before any connection; any larger value waits as
          set, ``float("inf")`` included.
        - ``token``: a JWT, or an async function returning a fresh one, asked before
          every connection; with a function, a connection the server closes with 4401
          when its token expires is resumed with a new token instead of ending.
        - ``receive_events=False``: a publish-only client; events are checked for
          sequence but not queued, so nothing piles up unread.
        - ``max_queued_events`` (10,000) and ``max_queued_bytes`` (16 MiB, counted as
          the frames' encoded size): the most events received and not yet taken from
          :meth:`events`. When they are reached the client stops reading its socket,
          so the server holds the rest, then closes the connection as too slow to read
          (4429), and the client resumes from the last event queued once the
          application has read the queue down to half. Nothing is dropped; see
          :meth:`events`.

        The first connection is not retried: a wrong URL, a refused token or a missing
        session fails here, with :class:`Refused`, ``OSError`` or ``TimeoutError``.
        """
        if isinstance(codec, str):
            if codec not in _CODECS:
                raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")
            codec = _CODECS[codec]
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
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            receive_events=receive_events,
            max_queued_events=max_queued_events,
            max_queued_bytes=max_queued_bytes,
        )
        try:
            ws = await client._link.open()
        except Retry as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError | TimeoutError):
                raise cause from None
            raise ConnectionLost(str(exc)) from cause
        client._link.start(ws)
        return client

    async def close(self) -> None:
        """Close the connection (1000) and stop: waiting requests fail with
        :class:`SessionEnded`, and :meth:`events` ends. Safe to call twice."""
        await self._link.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state ----------------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        session_id = self._state.session_id
        assert session_id is not None  # known once connect() returned
        return session_id

    @property
    def epoch(self) -> str | None:
        return self._state.epoch

    @property
    def last_seq(self) -> int:
        """Where a later :meth:`connect` (``last_seq=..., epoch=...``) resumes from: every
        seq up to it was seen, as an event or as our own publish's ack. It is the
        highest seq seen, except while an ack of ours has overtaken other peers' events
        with lower seqs: then it stays below them until they arrive."""
        return self._state.sequence.resume_point

    @property
    def connected(self) -> bool:
        """Whether the client is attached now: welcomed, its unanswered requests resent,
        and the connection open. False from the moment the client knows it is gone
        (dropped by the keepalive, closed by either end, reconnecting, finished), even
        while the application leaves the events feed full and the client waits for it
        before it resumes; True again once resumed."""
        return self._link.ready

    @property
    def finished(self) -> bool:
        return self._state.failure is not None

    @property
    def connection_id(self) -> str | None:
        """This connection's id, as other peers see it in ``presence``."""
        return self._state.connection_id

    @property
    def session(self) -> SessionMetadata | None:
        """The session's metadata as of the last ``welcome``."""
        return self._state.session

    @property
    def connections(self) -> int:
        """Connections attached to the session, as the last ``presence`` said."""
        return self._state.connections

    @property
    def closed_reason(self) -> str | None:
        """The reason of the server's ``closed`` frame, when one came."""
        return self._state.closed_reason

    @property
    def queued_events(self) -> int:
        """Events (and :class:`Reset` markers) received and not yet taken from
        :meth:`events`; at most ``max_queued_events``."""
        return len(self._state.feed)

    @property
    def queued_bytes(self) -> int:
        """Their encoded size; ``max_queued_bytes`` at most, plus the last event's."""
        return self._state.feed.bytes

    @property
    def skipped_events(self) -> int:
        """Events read past a full queue (to reach the reply of a request) and not kept:
        each comes again, in order, when the client resumes (see :meth:`events`)."""
        return self._state.skipped

    @property
    def reconnects(self) -> int:
        """Successful reconnects so far."""
        return self._link.reconnects

    @property
    def resent(self) -> int:
        """Requests sent again after a reconnect."""
        return self._link.resent

    # -- events -------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[StoredEvent | Reset]:
        """The session's events as they arrive (``StoredEvent`` with ``seq``, ``ts`` and a
        typed ``event``), resuming across drops with no gap and no duplicate, and a
        :class:`Reset` when a reconnect could not resume. Ends when the session is
        closed or :meth:`close` is called; raises :class:`SequenceError`,
        :class:`Refused` or :class:`ConnectionLost` when the stream cannot go on,
        the latter also when the session is closed before every event up to the last
        seq known to be in it came (the last welcome's ``last_seq``, which a resume's
        replay goes up to, or a higher seq of an event or an ack of ours), as when the
        close cuts a resume's replay short: its message names the seq after which
        ``GET /api/v1/sessions/{id}/events`` has the rest. A session that ended while
        the client was away (its resume refused, 4409) may have taken events meanwhile:
        the client asks that endpoint once (``limit=1``, with its token, within
        ``open_timeout``) whether any follow the last it delivered, and ends with
        :class:`ConnectionLost` if some do, or if the question fails (then the message
        says they *may* be missing), and normally if none do; an answer of another
        epoch's log (the session was replaced) yields a :class:`Reset`, then ends.

        Our own publishes are not in it: the server sends events to every peer but
        their publisher, except a publish stored just before a drop that lost its
        ``ack``: it comes to the new connection as an event, before the resent
        publish's ``ack`` could tell it is ours. Iterate from one task at a time.

        Events wait here until taken, ``max_queued_events`` and ``max_queued_bytes`` at
        most (see :meth:`connect`). An application that stops taking them loses none,
        and its requests are never held up behind them: :mod:`.feed` says how."""
        feed = self._state.feed
        while True:
            item: Any = await feed.get()
            if item is END:
                failure = self._state.failure
                if isinstance(failure, SessionEnded):
                    return
                assert failure is not None
                raise failure
            yield item
