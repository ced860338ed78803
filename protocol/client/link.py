"""Link: keeps a client attached to its session across drops.

One task per client reads the connection and hands every frame to :class:`.ClientState`;
a sender task per connection writes requests, in the order they were made, and a
:class:`.Keepalive` drops a connection that went silent. When the
connection ends in a way worth retrying (:func:`.close_outcome`), the link reconnects
with exponential backoff and full jitter (:class:`ReconnectPolicy`; from its first wait
again after a connection that did useful work, :func:`.recovered`), with the ``hello``
the state gives (resume from ``last_seq`` and ``epoch``), then resends every unanswered
request in its original order before any new request goes out. Anything else ends the
client through :meth:`Link.finish`, with the error :mod:`.endings` gives when the
session ended.

Requests wait for the sender in a queue; it takes whatever is there when it runs. A
lone request goes out at once, with no wait for company; publishes that queued up
together (made in one turn of the loop, or while the sender was writing, or before a
reconnect) go as one ``batch`` frame when the server offers the extension
(:mod:`.outgoing`).

The reader never holds more unread events than the events feed allows
(:class:`.EventFeed`), and never deadlocks a request against it. While the feed is full
(or the connection has skipped an event, :attr:`.ClientState.overflowed`) it reads
nothing, unless a request waits for its reply; it is woken when the application has
read the feed down to half, or when a request is made. With a request waiting it reads
on, and events past the full feed are skipped, to be replayed: once the feed is read
down, nothing more is sent on that connection, the reader closes it once the requests
sent on it are answered (the server drops replies still on their way at a close), and
the link resumes on a new one (a :class:`.Resync`) from the last event queued. A reply
is therefore always read: while it is awaited, nothing but the socket itself stands
between it and its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from bamboo_session.wakeup import Wakeup

from ..errors import CloseCode
from ..frames import PublishEvent, PublishMessage
from .endings import ended_while_away, unless_behind
from .errors import ClientError, ConnectionLost, Resync, Retry, SessionEnded
from .handshake import Dialer, closed_outcome
from .keepalive import Keepalive
from .outgoing import MAX_BATCH_ITEMS, Publish, batch_bytes, batch_frame, plan, single_frame
from .pending import PendingRequest
from .reconnect import ReconnectPolicy, recovered
from .state import ClientState
from .tasks import stopped

log = logging.getLogger("bamboo_session.client")


class Link:
    """The connection side of one client: opens, reads, resends, reconnects."""

    def __init__(
        self,
        state: ClientState,
        dialer: Dialer,
        policy: ReconnectPolicy,
        request_timeout: float | None,
        keepalive: Keepalive,
    ) -> None:
        self.state = state
        self.dialer = dialer
        self.policy = policy
        self.request_timeout = request_timeout
        self.keepalive = keepalive
        self._ws: ClientConnection | None = None
        self._generation = 0  # counts connections; a request remembers the one it went on
        self._ready = False  # connected, and every earlier request resent
        self._queued: list[PendingRequest] = []  # for the sender, oldest first
        self._sender_wakeup = Wakeup()  # by a request queued while the sender waits
        # This connection is about to be replaced (a resync): send nothing more on it.
        self._holding = False
        # While the reader waits for room in the events feed, or for a request.
        self._reader_wakeup = Wakeup()
        state.feed.on_drained = self._wake_reader
        self._runner: asyncio.Task[None] | None = None
        self.reconnects = 0  # successful reconnects so far
        self.resent = 0  # requests sent again after a reconnect

    @property
    def ready(self) -> bool:
        """Connected, every earlier request resent, and the connection not known to be
        gone: dropped by the keepalive, or closed, while the reader waits for the
        application to read its events (the reader sees it only then)."""
        ws = self._ws
        return self._ready and ws is not None and ws.protocol.state is State.OPEN

    # -- opening ------------------------------------------------------------------------

    async def open(self) -> ClientConnection:
        """One connection, attached and welcomed (see :meth:`.Dialer.open`)."""
        state = self.state
        hello = state.next_hello()
        ws, welcome = await self.dialer.open(state.session_id, hello)
        state.welcomed(welcome, hello.last_seq)
        return ws

    def start(self, ws: ClientConnection) -> None:
        """Run the link on ``ws``, the first connection, until the client ends."""
        self._ws = ws  # close() before the runner first runs must still close it
        self._ready = True  # welcomed, with nothing from before it to resend
        self._runner = asyncio.create_task(self._run(ws), name="bamboo-client")

    # -- requests -----------------------------------------------------------------------

    async def request(self, request_id: int, frame: Any, is_publish: bool = False) -> Any:
        """Send ``frame`` (soon, or after the reconnect under way) and wait for its reply,
        resending it after every reconnect until it comes. A publish is encoded here,
        so that what cannot be encoded fails its caller, not the sender."""
        state = self.state
        if state.failure is not None:
            raise state.failure
        if isinstance(frame, PublishEvent | PublishMessage):
            frame = Publish(self.dialer.codec, frame)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pending = state.pending.add(request_id, frame, future, is_publish)
        # Queued for this connection's sender; if there is none (reconnecting), the
        # next connection's sender takes it from the book with everything unanswered.
        self._queued.append(pending)
        self._sender_wakeup.set()
        self._wake_reader()  # its reply must be read, whatever the events feed holds
        try:
            async with asyncio.timeout(self.request_timeout):  # 3.11's wait_for drops cancels
                return await asyncio.shield(future)
        finally:
            state.pending.release(request_id)

    async def _send_all(self, ws: ClientConnection) -> None:
        """This connection's sender: every request not yet sent on it, oldest first, then
        new ones as they are queued, until the connection closes."""
        generation = self._generation
        book = self.state.pending
        book.forget_batches()
        self._queued = []  # the book lists them all, in order
        queue = book.unsent(generation)
        while True:
            if queue:
                await self._send(ws, queue, generation)
            elif not self._queued:
                self._ready = True  # everything from before this connection is resent
                await self._sender_wakeup.wait()
            queue, self._queued = self._queued, []

    async def _send(
        self, ws: ClientConnection, queue: list[PendingRequest], generation: int
    ) -> None:
        """``queue`` on ``ws``, a frame per group of :func:`.plan`."""
        codec, book = self.dialer.codec, self.state.pending
        if self._holding:
            return  # the next connection sends them (the book keeps them all)
        unsent = [p for p in queue if not p.settled and p.sent_on != generation]
        items = min(MAX_BATCH_ITEMS, self.state.max_batch_items)
        for group in plan(unsent, items, batch_bytes(self.state.max_batch_bytes)):
            for pending in group:
                if pending.mark_sent(generation):
                    self.resent += 1
            first = group[0].frame
            if len(group) > 1:
                batch_id = book.next_id()
                book.add_batch(batch_id, [p.frame.id for p in group])
                data = batch_frame(codec, batch_id, [p.frame for p in group])
            elif isinstance(first, Publish):
                data = single_frame(codec, first)
            else:
                data = codec.encode(first)
            await ws.send(data, text=codec.text)

    # -- the task -------------------------------------------------------------------------

    async def _run(self, ws: ClientConnection) -> None:
        """Read a connection until it drops, then reconnect; until the client ends."""
        loop = asyncio.get_running_loop()
        attempt = 0  # reconnect attempts since the last connection that recovered
        try:
            while True:
                self._ws = ws
                self._generation += 1
                self._holding = False
                started, progress = loop.time(), self.state.progress
                error = await self._serve(ws)
                self._ready = False
                self._ws = None
                if error is None:
                    return  # finished (closed, ended or a sequence error)
                if not self.policy.enabled:
                    if isinstance(error, Resync):
                        why = "events skipped past the full events queue need a resume"
                        self.finish(ConnectionLost(f"{why}, and reconnect is off"))
                    else:
                        self.finish(ConnectionLost(f"connection lost: {error}"))
                    return
                log.info("connection lost (%s); reconnecting", error)
                lasted, progressed = loop.time() - started, self.state.progress > progress
                if isinstance(error, Resync) or recovered(lasted, progressed):
                    attempt = 0  # a resync is no failure either: its connection was fine
                reconnected, attempt = await self._reconnect(error, attempt)
                if reconnected is None:
                    return
                ws = reconnected
                self.reconnects += 1
        except ClientError as exc:
            self.finish(unless_behind(self.state, exc))
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("client failed")
            self.finish(ClientError(f"client failed: {exc!r}"))

    async def _reconnect(self, error: Retry, attempt: int) -> tuple[ClientConnection | None, int]:
        """A new connection after backoff, and the attempts made so far (counting from
        ``attempt``); no connection when the policy gives up."""
        while not self.policy.gives_up(attempt):
            await asyncio.sleep(self.policy.delay(attempt))
            attempt += 1
            try:
                return await self.open(), attempt
            except Retry as exc:
                error = exc
            except SessionEnded as exc:
                self.finish(await ended_while_away(self.state, self.dialer, exc))
                return None, attempt
        self.finish(ConnectionLost(f"gave up after {attempt} attempts: {error}"))
        return None, attempt

    async def _serve(self, ws: ClientConnection) -> Retry | None:
        """Read ``ws`` while its sender writes and its keepalive watches; the error to
        reconnect after, or ``None`` when the client is finished."""
        sender = asyncio.create_task(self._sender(ws))
        keepalive = self.keepalive.start(ws)
        try:
            return await self._read_until_closed(ws)
        finally:
            await stopped(sender, keepalive)

    async def _sender(self, ws: ClientConnection) -> None:
        try:
            await self._send_all(ws)
        except ConnectionClosed:
            pass  # the reader sees why
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("client sender failed")
            self.finish(ClientError(f"client failed: {exc!r}"))

    async def _read_until_closed(self, ws: ClientConnection) -> Retry | None:
        try:
            resync = await self._read(ws)
            self.state.behind = True  # it skipped events: only a resume brings them
            await self._close_skipping(ws)
            return resync
        except ConnectionClosed as exc:
            error = closed_outcome(exc, self.state.closed_reason)
            if isinstance(error, Retry):
                # What the server still had for us went with this connection when we had
                # stopped reading (or skipped events), or when it dropped us as too slow.
                received = exc.rcvd
                too_slow = received is not None and received.code == CloseCode.TOO_SLOW
                if too_slow or self.state.backlogged:
                    self.state.behind = True
                return error
            if self._token_expired(exc):
                return Retry("token expired: reconnecting with a fresh one")
            self.finish(unless_behind(self.state, error))
        except (msgspec.DecodeError, ClientError) as exc:
            self.finish(exc if isinstance(exc, ClientError) else ClientError(str(exc)))
            await ws.close()
        return None

    def _token_expired(self, exc: ConnectionClosed) -> bool:
        """The server closed an open connection with 4401 (its token expired), and the
        client can get a fresh token: resume with it rather than stop."""
        received = exc.rcvd
        return (
            received is not None
            and received.code == CloseCode.UNAUTHORIZED
            and self.dialer.refreshes_tokens
        )

    async def _read(self, ws: ClientConnection) -> Resync:
        """Read ``ws`` until it closes (ConnectionClosed), or until it has skipped events
        and the feed is read down: then a :class:`.Resync`, to resume on a new one."""
        state = self.state
        feed = state.feed
        while True:
            if state.backlogged:
                if state.overflowed and feed.drained:
                    # Send nothing more on this connection, and close it only once the
                    # requests sent on it are answered: the server drops the replies
                    # still on their way when the client closes (an ack lost so would
                    # bring our own publish back as someone else's event).
                    self._holding = True
                    if not state.pending.sent_on(self._generation):
                        after = state.sequence.resume_point
                        return Resync(f"events queue read down; resuming after seq {after}")
                elif not state.pending:
                    # Nothing waits for a reply: stop reading, and let TCP hold the
                    # server back, until the application reads or makes a request.
                    await self._reader_wakeup.wait()
                    continue
            # No local of this loop keeps the frame while the next is awaited: a client
            # that received a big event and then waits would keep it for as long as the
            # quiet lasts, counted by no bound once events() has taken it.
            self._take(await ws.recv(decode=False))
            if state.failure is not None:
                raise state.failure

    def _take(self, data: bytes) -> None:
        """One frame read: decoded and handled, and let go of as read on return."""
        self.state.receive(self.dialer.codec.decode_server(data), len(data))

    def _wake_reader(self) -> None:
        self._reader_wakeup.set()

    async def _close_skipping(self, ws: ClientConnection) -> None:
        """Close ``ws`` (1000), reading what it still brings until the server's close
        frame: replies are taken as usual, events are skipped (the connection has
        overflowed) for the next connection to replay."""
        state = self.state
        closing = asyncio.create_task(ws.close(reason="events queue overflowed: resuming"))
        try:
            with contextlib.suppress(ConnectionClosed):
                while state.failure is None:
                    self._take(await ws.recv(decode=False))
        finally:
            await closing
        if state.failure is not None:
            raise state.failure

    # -- the end --------------------------------------------------------------------------

    def finish(self, failure: ClientError) -> None:
        """End the client: fail what waits, end events(), close the connection unless
        the session ended (the server closes it then)."""
        if not self.state.finish(failure):
            return
        self._ready = False
        ws = self._ws
        if ws is not None and not isinstance(failure, SessionEnded):
            asyncio.get_running_loop().create_task(ws.close())

    async def close(self) -> None:
        """Stop the task and close the connection (1000)."""
        self.finish(SessionEnded("client closed"))
        runner, self._runner = self._runner, None
        await stopped(runner)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
