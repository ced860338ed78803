"""What a session actor is asked to do: its commands, how each answers its requester,
and what becomes of one that comes too late (the inbox they wait in: server/inbox.py).

Requests (appends, state changes) come from a peer, whose reply goes to its outbox, or
from the in-process API, whose reply resolves a future; a request answers its
requester either way. The items of a peer's ``batch`` frame are appends like any other,
queued together, that answer their :class:`BatchReply` instead: one ``acks`` frame (or
one ``error``) for the lot. An append or a state change the store may have stored or
not (OutcomeUnknown) answers a peer with no frame, but its connection's close
(``_Request.in_doubt``); the appends and state changes of that connection queued
behind it are not made (:func:`behind_doubt`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from msgspec import Struct

from bamboo_session.persistence.base import (
    Appended,
    OutcomeUnknown,
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    StorageError,
)
from bamboo_session.protocol.codec import JSON, checked_event, checked_key
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import (
    Ack,
    Acks,
    Error,
    PublishBatch,
    RequestId,
    ServerFrame,
    Welcome,
)
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    MessageEvent,
    SessionMetadata,
    SessionState,
)

from .decode_charge import msgpack_bound, over_frame_limit
from .failures import PUBLISH_IN_DOUBT, STATE_IN_DOUBT, WRITES_IN_DOUBT, request_error
from .outbound import Outbound
from .outbox import Outbox
from .quotas import WelcomeTooLarge, welcome_over
from .room import HeldConnections


class _Request:
    """A command whose requester waits for a reply: a peer (``origin``, ``request_id``)
    or the in-process API (``future``)."""

    __slots__ = ()
    origin: Outbox | None
    request_id: RequestId
    future: asyncio.Future[Any] | None

    def _answer(self, value: object, ack: ServerFrame) -> None:
        if self.future is not None:
            if not self.future.done():
                self.future.set_result(value)
        elif self.origin is not None:
            self.origin.settle()
            self.origin.push(Outbound(ack))

    def refuse(self, exc: BaseException) -> str | None:
        """Answer with a failure; returns the ``error`` code sent to a peer, if any."""
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(exc)
            return None
        if self.origin is None:
            return None
        error = request_error(exc, self.request_id)
        self.origin.settle()
        self.origin.push(Outbound(Error(error.code.value, error.message, id=error.request_id)))
        return error.code.value

    def in_doubt(self, exc: OutcomeUnknown, close: tuple[CloseCode, str]) -> None:
        """A write the store may have made (OutcomeUnknown): a future gets ``exc``; a
        peer neither an ``ack`` nor an ``error`` (either might be untrue), but its
        connection closed with ``close`` (1011), to resume by. An append's resume
        replays the event if it was stored, through a new connection: the contract's
        publisher never gets its own event; a state change's resume is welcomed with
        the session's state, or refused 4409 if a close stood. The closed connection
        gets nothing more (Outbox.push)."""
        if self.future is not None:
            if not self.future.done():
                self.future.set_exception(exc)
        elif self.origin is not None:
            self.origin.settle()
            self.origin.close(*close)


class Append(Struct, _Request):
    """An append (an ``event`` or ``message`` frame, an item of a ``batch``, an
    in-process call). A Struct, made in C: one for every event appended."""

    event: AnyAgentEvent
    key: str | None = None
    origin: Outbox | None = None
    request_id: RequestId = None
    future: asyncio.Future[Appended] | None = None
    received: float = 0.0  # time.monotonic() when it was read: append-to-ack latency
    size: int = 0  # bytes of the frame it came in (its share of a batch's): inbox bytes
    batch: BatchReply | None = None  # an item of a batch frame answers through it

    def answer(self, result: Appended) -> None:
        if self.batch is not None:
            self.batch.answer(result)
        else:
            self._answer(result, Ack(result.seq, id=self.request_id, duplicate=result.duplicate))

    def refuse(self, exc: BaseException) -> str | None:
        if self.batch is not None:
            return self.batch.refuse(exc)
        if isinstance(exc, OutcomeUnknown):
            self.in_doubt(exc, PUBLISH_IN_DOUBT)
            return None
        return _Request.refuse(self, exc)


def behind_doubt(command: Append | SetState) -> bool:
    """Whether ``command``, a write, came on a connection closed already for an append
    or a state change in doubt before it (WRITES_IN_DOUBT): then it is not made, and its answer goes
    with the connection, as that close tells its peer to resend every request
    unanswered, in order. An append made was stored again by its resend, without a
    key to tell the two apart, and stored before the one in doubt when Redis ran that
    one late; a ``state`` of ``closed`` made closed the session before the resend of
    the one in doubt, never stored if it was lost: refused 4409, the publish too."""
    closing = command.origin.closing if command.origin is not None else None
    if closing is None or (closing.code, closing.reason) not in WRITES_IN_DOUBT:
        return False
    command.refuse(OutcomeUnknown("not made: its connection closed for a write in doubt"))
    return True


def batch_frame_appends(frame: PublishBatch, origin: Outbox, size: int) -> list[Append]:
    """The items of a peer's ``batch`` frame (``size`` bytes) as appends queued together,
    answered with one ``acks`` through their :class:`BatchReply`. Each weighs its share
    of the frame's bytes in the inbox, the first the remainder too."""
    items = frame.items
    count = len(items)
    reply = BatchReply(origin, frame.id, count)
    received = time.monotonic()
    share = size // count
    appends = []
    for item in items:
        event = item.event
        if item.message is not None:
            event = MessageEvent(item.message.completed())
        elif isinstance(event, MessageEvent):
            event = MessageEvent(event.message.completed())
        assert event is not None  # the codec checked: one of event and message
        appends.append(Append(event, item.key, origin, None, None, received, share, reply))
    appends[0].size += size - share * count
    return appends


def by_request(appends: list[Append]) -> list[list[Append]]:
    """Appends taken together, split by the request each answers: a batch frame's items
    (which come together) stay together."""
    requests: list[list[Append]] = []
    for command in appends:
        batch = command.batch
        if batch is not None and requests and requests[-1][0].batch is batch:
            requests[-1].append(command)
        else:
            requests.append([command])
    return requests


def in_process_batch(
    items: Sequence[tuple[AnyAgentEvent, str | None]],
    max_items: int,
    max_bytes: int,
    max_event_json: int = 0,
) -> tuple[list[Append], asyncio.Future[list[Appended]]]:
    """The items of an in-process ``append_events`` as appends that answer one future
    (:class:`BatchReply`), checked as a peer's ``batch`` frame is. ValueError, before
    anything is queued, for a bad event or key, or more than ``max_items`` items or
    ``max_bytes`` of weight (0: no limit, as for the inbox), or an event over
    ``max_event_json`` as a viewer gets it (0: none; decode_charge.py
    ``over_frame_limit``, the check of a peer's publish)."""
    checked = [(*checked_event(event), checked_key(key)) for event, key in items]
    for index, (event, weight, _) in enumerate(checked if max_event_json else ()):
        # Its weight is at least its JSON as given, which its copy's is no longer than
        # (a time brought to UTC is shorter): most are far within, and not encoded again.
        if msgpack_bound(weight) <= max_event_json:
            continue
        if (found := over_frame_limit(JSON.encode(event), max_event_json)) is not None:
            which = f"item {index}'s event" if len(checked) > 1 else "the event"
            raise ValueError(f"event cannot be stored: {which} {found}")
    count, size = len(checked), sum(size for _, size, _ in checked)
    if count > max_items or size > (max_bytes or size):
        limits = f"{max_items} items and {max_bytes} bytes"
        raise ValueError(f"a batch holds at most {limits}, not {count} and {size}")
    acked: asyncio.Future[list[Appended]] = asyncio.get_running_loop().create_future()
    reply = BatchReply(None, None, count, acked)
    return [Append(event, key, batch=reply, size=size) for event, size, key in checked], acked


class BatchReply(_Request):
    """The one reply to appends queued together: a peer's ``batch`` frame, or an
    in-process ``append_events`` (``future``). The actor never splits them between two
    store appends (``Inbox.take_batch``, server/inbox.py), and a store append is stored
    whole or not at all, so they are answered together: once the last is answered,
    ``acks`` with every seq (the future: what each became), or one ``error`` (the first
    refusal; the others say nothing more)."""

    __slots__ = ("future", "origin", "request_id", "results", "settled", "size")

    def __init__(
        self,
        origin: Outbox | None,
        request_id: RequestId,
        size: int,
        future: asyncio.Future[list[Appended]] | None = None,
    ) -> None:
        self.origin = origin
        self.request_id = request_id
        self.future = future
        self.size = size  # items
        self.results: list[Appended] = []
        self.settled = False

    def answer(self, result: Appended) -> None:
        if self.settled:
            return
        results = self.results
        results.append(result)
        if len(results) == self.size:
            self.settled = True
            duplicates = [index for index, done in enumerate(results) if done.duplicate]
            acks = Acks([done.seq for done in results], id=self.request_id, duplicates=duplicates)
            self._answer(results, acks)

    def refuse(self, exc: BaseException) -> str | None:
        if self.settled:
            return None
        self.settled = True
        if isinstance(exc, OutcomeUnknown):
            self.in_doubt(exc, PUBLISH_IN_DOUBT)
            return None
        return _Request.refuse(self, exc)


# Why a peer may not have a session, if it may not (server/auth.py access_refusal).
AccessRefusal = Callable[[SessionMetadata], Exception | None]


@dataclass(slots=True)
class Attach:
    """``outbox`` into the session; ``access``, asked of the metadata the actor reads
    for the welcome: the hello's own check may have found no session to check against
    (not there yet, or not listed while a delete was under way) that is there now."""

    outbox: Outbox
    last_seq: int | None
    epoch: str | None
    future: asyncio.Future[Welcome]
    access: AccessRefusal | None = None


@dataclass(slots=True)
class Detach:
    connection_id: str


@dataclass(slots=True)
class SetState(_Request):
    state: SessionState
    origin: Outbox | None = None
    request_id: RequestId = None
    future: asyncio.Future[int] | None = None

    def answer(self, last_seq: int) -> None:
        """Done; a peer's ``ack`` carries the session's last seq."""
        self._answer(last_seq, Ack(last_seq, id=self.request_id))

    def refuse(self, exc: BaseException) -> str | None:
        if isinstance(exc, OutcomeUnknown):
            self.in_doubt(exc, STATE_IN_DOUBT)
            return None
        return _Request.refuse(self, exc)


@dataclass(slots=True)
class Stop:
    """Close every connection with ``code`` (after a ``closed`` frame) and retire; with
    ``hand_over``, retire handing the connections, still open, to that holder: the
    stopper tells them once it knows what to (a delete's outcome), unless a server
    stop tells them first."""

    code: CloseCode
    reason: str
    future: asyncio.Future[None] | None = field(default=None)
    hand_over: HeldConnections | None = None


@dataclass(slots=True)
class Tick:
    """A timer fired: check idleness or the end of parking (``generation`` guards
    against a timer that outlived the park it was set for)."""

    generation: int


@dataclass(slots=True)
class Announce:
    """A connection to the session on another server process joined or left
    (server/presence.py); ``connections`` is the session-wide count after it."""

    connection_id: str
    role: str
    joined: bool
    connections: int


@dataclass(slots=True)
class RegisteredAgain:
    """The presence heartbeat registered again connections the store had lost."""


@dataclass(slots=True)
class Settle:
    """Answered once the commands queued before it are carried out: the appends among
    them stored or refused (server/renewals.py)."""

    future: asyncio.Future[None]


Command = Append | Attach | Detach | SetState | Stop | Tick | Announce | RegisteredAgain | Settle
Request = Append | SetState  # commands whose requester waits for a reply


class ActorRetired(Exception):
    """The actor stopped taking attaches before it got to this one: attach again, to
    the session's next actor."""


def attach_refusal(
    metadata: SessionMetadata | None,
    session_id: str,
    now: datetime,
    access: AccessRefusal | None = None,
    max_frame_bytes: int = 0,
) -> Exception | None:
    """Why a session may not be attached to (by a peer ``access`` may refuse), if it
    may not; ``now``: the store's clock (``Storage.now``), which its expiry is of. With
    ``max_frame_bytes``, a session whose ``welcome`` would be over it is refused too."""
    if metadata is None:
        return SessionNotFound(session_id)
    if access is not None and (refused := access(metadata)) is not None:
        return refused
    if metadata.is_expired(now):
        return SessionExpired(session_id)
    if metadata.state == SessionState.CLOSED:
        return SessionClosed(session_id)
    title, user_id, extra = metadata.title, metadata.user_id, metadata.extra
    if (size := welcome_over(max_frame_bytes, title, user_id, extra)) is not None:
        return WelcomeTooLarge(f"its welcome would be {size} bytes ({max_frame_bytes})")
    return None


def answer_late(command: Command, closed: bool, session_id: str) -> str | None:
    """Answer a command that reached an actor after it finished its work; the error
    code sent to a peer, if any."""
    if isinstance(command, Append | SetState):
        reason = "session went offline, reconnect and retry"
        return command.refuse(SessionClosed(session_id) if closed else StorageError(reason))
    if isinstance(command, Attach) and not command.future.done():
        command.future.set_exception(ActorRetired(session_id))
    elif isinstance(command, Stop) and command.future is not None and not command.future.done():
        command.future.set_result(None)  # done: its stopper gave up waiting
    elif isinstance(command, Settle) and not command.future.done():
        command.future.set_result(None)  # the actor has nothing left to store
    return None
