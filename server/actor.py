"""SessionActor: the one task that owns a live session.

It alone appends to the session's log, so it alone assigns ``seq``; it keeps a ring of
recent events for replay without touching disk, the idempotency-key window, and the
set of attached outboxes. Commands arrive in its inbox and are handled in batches: a run
of appends becomes one storage batch (one group commit), then each stored event is
encoded once and pushed to every other outbox. Because attaching is handled between
batches, a joining connection sees every event exactly once: older ones replayed, newer
ones live.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from bamboo_session.persistence.base import (
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    StorageError,
)
from bamboo_session.protocol.errors import CloseCode, ErrorCode
from bamboo_session.protocol.frames import Ack, Closed, Error, Presence, RequestId, Welcome
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from .outbox import Outbound, Outbox, Replay

if TYPE_CHECKING:
    from .manager import SessionManager

log = structlog.get_logger("bamboo_session.actor")

KEY_WINDOW = 10_000  # appends within which an idempotency key is remembered (PROTOCOL.md)
REPLAY_PAGE = 512
PARKED_RING_SIZE = 64
_BATCH_MAX = 512


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int
    duplicate: bool = False


@dataclass(slots=True)
class Append:
    event: AnyAgentEvent
    key: str | None = None
    origin: Outbox | None = None
    request_id: RequestId = None
    future: asyncio.Future[AppendResult] | None = None


@dataclass(slots=True)
class Attach:
    outbox: Outbox
    last_seq: int | None
    epoch: str | None
    future: asyncio.Future[Welcome]


@dataclass(slots=True)
class Detach:
    connection_id: str


@dataclass(slots=True)
class SetState:
    state: SessionState
    origin: Outbox | None = None
    request_id: RequestId = None
    future: asyncio.Future[int] | None = None


@dataclass(slots=True)
class Stop:
    """Close every connection with ``code`` (after a ``closed`` frame) and retire."""

    code: CloseCode
    reason: str
    future: asyncio.Future[None] | None = field(default=None)


@dataclass(slots=True)
class Tick:
    """A timer fired: check idleness or the end of parking (``generation`` guards
    against a timer that outlived the park it was set for)."""

    generation: int


Command = Append | Attach | Detach | SetState | Stop | Tick


class Inbox:
    """The actor's command queue. Peers' frames wait for room (back-pressure on their
    socket); the actor's own timers and the manager never do."""

    __slots__ = ("_has_room", "_items", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # A deque keeps a 760-byte block even when empty: a parked session drops it.
        self._items: collections.deque[Command] | None = None
        self._has_room: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items) if self._items is not None else 0

    def append(self, command: Command) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(command)

    def release(self) -> None:
        """Drops the empty queue's storage (a parked session keeps none)."""
        if not self._items:
            self._items = None

    async def wait_for_room(self) -> None:
        while len(self) >= self.limit:
            if self._has_room is None or self._has_room.done():
                self._has_room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._has_room)

    def take_all(self) -> list[Command]:
        items = list(self._items or ())
        self._items = None
        return items

    def take_batch(self, max_items: int) -> list[Command]:
        items = self._items
        if items is None:
            return []
        batch = [items.popleft() for _ in range(min(max_items, len(items)))]
        room = self._has_room
        if room is not None and not room.done() and len(items) < self.limit:
            room.set_result(None)
        return batch


class ActorRetired(Exception):
    """The actor stopped taking attaches before it got to this one: attach again, to
    the session's next actor."""


# What the in-process API raises for an error code (the WebSocket API sends the code).
_ERRORS_BY_CODE: dict[ErrorCode, type[StorageError]] = {
    ErrorCode.CLOSED: SessionClosed,
    ErrorCode.NOT_FOUND: SessionNotFound,
}


def _attach_refusal(
    session_id: str, metadata: SessionMetadata | None, state: SessionState
) -> Exception | None:
    if metadata is None:
        return SessionNotFound(session_id)
    if metadata.is_expired():
        return SessionExpired(session_id)
    if state == SessionState.CLOSED:
        return SessionClosed(session_id)
    return None


class KeyWindow:
    """Idempotency keys of the last ``size`` appends, with the seq each was given."""

    __slots__ = ("_order", "_seq_by_key", "size")

    def __init__(self, size: int = KEY_WINDOW) -> None:
        self.size = size
        self._seq_by_key: dict[str, int] = {}
        # Allocated with the first key: most sessions of a parked crowd have none.
        self._order: collections.deque[tuple[int, str]] | None = None

    def get(self, key: str) -> int | None:
        return self._seq_by_key.get(key)

    def add(self, key: str, seq: int) -> None:
        self._seq_by_key[key] = seq
        if self._order is None:
            self._order = collections.deque()
        self._order.append((seq, key))

    def forget_before(self, last_seq: int) -> None:
        horizon = last_seq - self.size
        order = self._order
        while order and order[0][0] <= horizon:
            _, key = order.popleft()
            if self._seq_by_key.get(key, 0) <= horizon:
                self._seq_by_key.pop(key, None)


class SessionActor:
    """One live session: its inbox, ring, key window and attached outboxes, and a task
    that runs while connections are attached or commands wait (a parked crowd costs no
    tasks)."""

    __slots__ = (
        "_last_traffic",
        "_loop",
        "_timer",
        "_timer_generation",
        "_wakeup",
        "accepting",
        "epoch",
        "finished",
        "inbox",
        "keys",
        "manager",
        "outboxes",
        "published_seq",
        "ring",
        "session_id",
        "state",
        "task",
    )

    def __init__(self, manager: SessionManager, session_id: str, epoch: str, last_seq: int) -> None:
        self.manager = manager
        self.session_id = session_id
        self.epoch = epoch
        self.published_seq = last_seq  # every event up to here is durable and fanned out
        self.state = SessionState.DISCONNECTED
        self.accepting = True
        self.finished = False
        self.inbox = Inbox(manager.config.inbox_limit)
        # Recent events for replay without disk; allocated with the first event.
        self.ring: collections.deque[Outbound] | None = None
        self.keys = KeyWindow()
        self.outboxes: dict[str, Outbox] = {}
        self.task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._last_traffic = self._loop.time()
        self._timer_generation = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    async def load(cls, manager: SessionManager, session_id: str) -> SessionActor:
        """An actor for a stored session, its ring and key window filled from the log."""
        storage = manager.storage
        metadata = await storage.get_metadata(session_id)
        if metadata is None:
            raise SessionNotFound(session_id)
        if metadata.is_expired():
            raise SessionExpired(session_id)
        if metadata.state == SessionState.CLOSED:
            raise SessionClosed(session_id)
        actor = cls(manager, session_id, metadata.epoch, metadata.last_seq)
        actor.state = metadata.state
        tail = await storage.read_events(
            session_id, after_seq=max(0, metadata.last_seq - KEY_WINDOW)
        )
        for stored in tail:
            if stored.key is not None:
                actor.keys.add(stored.key, stored.seq)
        for stored in tail[-manager.config.ring_size :]:
            actor._remember(Outbound.for_event(stored))
        if tail:
            actor.published_seq = tail[-1].seq
        return actor

    def post(self, command: Command) -> None:
        """Queue a command from the manager or a timer; never waits."""
        if self.finished:
            self._reject(command)
            return
        self.inbox.append(command)
        waiting = self._wakeup
        if waiting is not None:
            if not waiting.done():
                waiting.set_result(None)
            return
        task = self.task
        if task is None or task.done():
            # A fresh context: the actor outlives the connection that happened to wake
            # it, and must not log with that connection's id.
            self.task = asyncio.create_task(
                self._run(), name=f"session-actor:{self.session_id}", context=contextvars.Context()
            )

    async def submit(self, command: Command) -> None:
        """Queue a peer's command, waiting while the inbox is full (back-pressure)."""
        await self.inbox.wait_for_room()
        self.post(command)

    def _reject(self, command: Command) -> None:
        """Answer a command that arrived after the actor finished its work."""
        closed = self.state == SessionState.CLOSED
        code = ErrorCode.CLOSED if closed else ErrorCode.INTERNAL
        message = "session closed" if closed else "session went offline, reconnect and retry"
        if isinstance(command, Append | SetState):
            self._fail(command, code, message)
        elif isinstance(command, Attach) and not command.future.done():
            command.future.set_exception(ActorRetired(self.session_id))
        elif isinstance(command, Stop) and command.future is not None:
            command.future.set_result(None)

    def start(self) -> None:
        self._arm_timer()

    async def _run(self) -> None:
        """Handles commands until the inbox is empty and no connection is attached;
        retires the actor once it stops accepting (closed, stopped, parked too long, or
        failed)."""
        structlog.contextvars.bind_contextvars(session_id=self.session_id)
        try:
            while self.accepting:
                if len(self.inbox):
                    await self._handle_batch(self.inbox.take_batch(_BATCH_MAX))
                elif self.outboxes:
                    await self._wait_for_commands()
                else:
                    self.inbox.release()
                    self.task = None  # nothing to run until the next command
                    break
        except asyncio.CancelledError:
            self.accepting = False
            self._close_all(CloseCode.SERVICE_RESTART, "server restarting")
            raise
        except Exception:
            log.exception("session actor failed")
            self.accepting = False
            self._close_all(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if not self.accepting and not self.finished:
                await self._finish()

    async def _wait_for_commands(self) -> None:
        """While connections are attached the task waits here instead of ending, so a
        busy session does not pay for a new task on every command."""
        self._wakeup = self._loop.create_future()
        try:
            await self._wakeup
        finally:
            self._wakeup = None

    async def _finish(self) -> None:
        self._retire()
        await self._drain_after_retire()
        with contextlib.suppress(StorageError, SessionNotFound):
            await self.manager.storage.checkpoint(self.session_id)

    def _retire(self) -> None:
        """Stop taking commands; from here on the manager spawns a new actor if needed."""
        self.accepting = False
        if self._timer is not None:
            self._timer.cancel()
        self.manager._actor_retired(self)

    async def _drain_after_retire(self) -> None:
        # Commands posted before the actor retired are answered, never dropped; from
        # the moment the inbox is found empty, new ones are rejected on arrival.
        while len(self.inbox):
            await self._handle_batch(self.inbox.take_batch(_BATCH_MAX))
        self.finished = True
        for command in self.inbox.take_all():
            self._reject(command)

    # -- command handling --------------------------------------------------------

    async def _handle_batch(self, batch: list[Command]) -> None:
        appends: list[Append] = []
        for command in batch:
            if isinstance(command, Append):
                appends.append(command)
                continue
            if appends:
                await self._append(appends)
                appends = []
            await self._handle(command)
        if appends:
            await self._append(appends)

    async def _handle(self, command: Command) -> None:
        match command:
            case Attach():
                await self._attach(command)
            case Detach():
                await self._detach(command.connection_id)
            case SetState():
                await self._set_state(command)
            case Stop():
                self._close_all(command.code, command.reason)
                self.accepting = False
                if command.future is not None and not command.future.done():
                    command.future.set_result(None)
            case Tick():
                await self._on_timer(command.generation)
            case _:  # pragma: no cover - Append is batched by the caller
                raise AssertionError(command)

    async def _append(self, appends: list[Append]) -> None:
        if self.state == SessionState.CLOSED:
            for command in appends:
                self._fail(command, ErrorCode.CLOSED, "session closed")
            return
        fresh, answers = self._split_duplicates(appends)
        try:
            stored = await self._store(fresh)
        except SessionClosed:
            for command in appends:
                self._fail(command, ErrorCode.CLOSED, "session closed")
            return
        except (SessionExpired, SessionNotFound) as exc:
            for command in appends:
                self._fail(command, ErrorCode.NOT_FOUND, f"session gone: {exc}")
            return
        except StorageError as exc:
            log.error("append failed", error=str(exc), count=len(fresh))
            for command in appends:
                self._fail(command, ErrorCode.INTERNAL, f"not stored, retry later: {exc}")
            return
        for command, event in zip(fresh, stored, strict=True):
            self._publish(event, command.origin)
        self.manager.metrics.events_appended.inc(len(stored))
        self.keys.forget_before(self.published_seq)
        self.note_traffic()
        if self.state == SessionState.IDLE and self.outboxes:
            await self._change_state(SessionState.ACTIVE)
        seq_of = {id(command): event.seq for command, event in zip(fresh, stored, strict=True)}
        for command, answer in answers:
            if answer is None:
                self._reply(command, AppendResult(seq_of[id(command)]))
            elif isinstance(answer, int):
                self._reply(command, AppendResult(answer, duplicate=True))
            else:
                self._reply(command, AppendResult(seq_of[id(answer)], duplicate=True))

    async def _store(self, fresh: list[Append]) -> list[StoredEvent]:
        if not fresh:
            return []
        items = [(command.event, command.key) for command in fresh]
        return await self.manager.storage.append_events(self.session_id, items)

    def _split_duplicates(
        self, appends: list[Append]
    ) -> tuple[list[Append], list[tuple[Append, Append | int | None]]]:
        """The appends to write, and for each append in order what answers it: itself
        (``None``), the seq of an earlier append with its key, or an earlier append of
        this same batch with its key."""
        fresh: list[Append] = []
        replies: list[tuple[Append, Append | int | None]] = []
        pending: dict[str, Append] = {}
        for command in appends:
            key = command.key
            if key is not None:
                seen = self.keys.get(key)
                # Within the last KEY_WINDOW appends as counted at this very append,
                # not at the start of the batch.
                next_seq = self.published_seq + len(fresh) + 1
                if seen is not None and next_seq - seen <= self.keys.size:
                    replies.append((command, seen))
                    continue
                if key in pending:
                    replies.append((command, pending[key]))
                    continue
                pending[key] = command
            fresh.append(command)
            replies.append((command, None))
        return fresh, replies

    def _publish(self, stored: StoredEvent, origin: Outbox | None) -> None:
        out = Outbound.for_event(stored)
        self._remember(out)
        self.published_seq = stored.seq
        if stored.key is not None:
            self.keys.add(stored.key, stored.seq)
        for outbox in self.outboxes.values():
            if outbox is not origin:
                outbox.push(out)

    def _remember(self, out: Outbound) -> None:
        ring = self.ring
        if ring is None:
            ring = self.ring = collections.deque(maxlen=self.manager.config.ring_size)
        ring.append(out)

    def _shrink_ring(self) -> None:
        """A parked session keeps only its newest events in memory: a quick reconnect
        still replays from memory, and a crowd of parked sessions stays small."""
        ring = self.ring
        if ring is None:
            return
        while len(ring) > PARKED_RING_SIZE:
            ring.popleft()
        if not ring:
            self.ring = None

    def _reply(self, command: Append, result: AppendResult) -> None:
        if command.future is not None:
            if not command.future.done():
                command.future.set_result(result)
        elif command.origin is not None:
            command.origin.settle()
            command.origin.push(
                Outbound(Ack(result.seq, id=command.request_id, duplicate=result.duplicate))
            )

    def _fail(self, command: Append | SetState, code: ErrorCode, message: str) -> None:
        if command.future is not None:
            if not command.future.done():
                error_type = _ERRORS_BY_CODE.get(code, StorageError)
                command.future.set_exception(error_type(message))
        elif command.origin is not None:
            command.origin.settle()
            command.origin.push(Outbound(Error(code.value, message, id=command.request_id)))
            self.manager.metrics.errors.labels(code=code.value).inc()

    async def _attach(self, command: Attach) -> None:
        if not self.accepting:
            if not command.future.done():
                command.future.set_exception(ActorRetired(self.session_id))
            return
        storage = self.manager.storage
        metadata = await storage.get_metadata(self.session_id)
        refusal = _attach_refusal(self.session_id, metadata, self.state)
        if refusal is not None or metadata is None:
            if not command.future.done():
                command.future.set_exception(refusal or SessionNotFound(self.session_id))
            return
        if self.state != SessionState.ACTIVE:
            await self._change_state(SessionState.ACTIVE)
            # The welcome carries the metadata as of this attach, activity included.
            metadata = await storage.get_metadata(self.session_id) or metadata
        outbox = command.outbox
        outbox.actor = self
        self.outboxes[outbox.connection_id] = outbox
        through = self.published_seq
        last_seq = command.last_seq
        resumed = (
            last_seq is not None
            and (command.epoch is None or command.epoch == self.epoch)
            and last_seq <= through
        )
        replay = through - last_seq if resumed and last_seq is not None else 0
        self.note_traffic()
        if len(self.outboxes) == 1:
            self._arm_timer()  # parked until now: from here on, watch for idleness
        metadata.connections = len(self.outboxes)
        metadata.state = self.state
        metadata.last_seq = through
        welcome = Welcome(outbox.connection_id, metadata, self.epoch, through, resumed, replay)
        outbox.push(Outbound(welcome))
        if replay and last_seq is not None:
            outbox.push(Replay(last_seq, through))
            self.manager.metrics.events_replayed.inc(replay)
        self._presence(outbox, joined=True)
        if not command.future.done():
            command.future.set_result(welcome)

    async def _detach(self, connection_id: str) -> None:
        outbox = self.outboxes.pop(connection_id, None)
        if outbox is None:
            return
        outbox.close(CloseCode.NORMAL, "disconnected")
        self._presence(outbox, joined=False)
        if not self.outboxes and self.state != SessionState.CLOSED:
            await self._change_state(SessionState.DISCONNECTED)
            self._shrink_ring()
            self._arm_timer()

    def _presence(self, subject: Outbox, *, joined: bool) -> None:
        frame = Presence(
            role=subject.role,
            connections=len(self.outboxes),
            joined=subject.connection_id if joined else None,
            left=None if joined else subject.connection_id,
        )
        out = Outbound(frame)
        for outbox in self.outboxes.values():
            if outbox is not subject:
                outbox.push(out)

    async def _set_state(self, command: SetState) -> None:
        try:
            await self._change_state(command.state, durable=True)
        except (StorageError, ValueError) as exc:
            self._fail(command, ErrorCode.CONFLICT, str(exc))
            return
        if command.future is not None and not command.future.done():
            command.future.set_result(self.published_seq)
        elif command.origin is not None:
            command.origin.settle()
            command.origin.push(Outbound(Ack(self.published_seq, id=command.request_id)))
        if command.state == SessionState.CLOSED:
            self._close_all(CloseCode.NORMAL, "session closed")
            self.accepting = False

    async def _change_state(self, state: SessionState, *, durable: bool = False) -> None:
        """Moves the session to ``state``. The server's own moves (active on attach,
        disconnected, idle) are written with the next checkpoint rather than each
        fsynced on the spot: after a crash no connection is attached anyway. A state a
        peer asked for (``durable``) is on disk before it is acknowledged."""
        if state == self.state:
            return
        self.state.check_transition(state)
        try:
            await self.manager.storage.update_session_state(self.session_id, state, durable=durable)
        except SessionExpired:
            # Expired under our feet: the state stays in memory only, and cleanup
            # removes the session; a state change is not activity that revives it.
            log.info("session expired", state=state.value)
        self.state = state

    def _close_all(self, code: CloseCode, reason: str) -> None:
        closed = Outbound(Closed(reason))
        for outbox in self.outboxes.values():
            outbox.push(closed)
            outbox.close(code, reason)
        self.outboxes.clear()

    # -- timers: idleness while connected, the end of parking when not -----------

    def note_traffic(self) -> None:
        """A peer sent a frame: the session is not idle."""
        self._last_traffic = self._loop.time()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_generation += 1
        config = self.manager.config
        delay = config.idle_timeout if self.outboxes else config.disconnect_retention
        generation = self._timer_generation
        self._timer = self._loop.call_later(max(delay, 0.0), self.post, Tick(generation))

    async def _on_timer(self, generation: int) -> None:
        if generation != self._timer_generation:
            return
        config = self.manager.config
        if not self.outboxes:
            self.accepting = False  # parked for the whole retention: retire
            return
        quiet = self._loop.time() - self._last_traffic
        if quiet >= config.idle_timeout:
            if self.state == SessionState.ACTIVE:
                await self._change_state(SessionState.IDLE)
        else:
            await self._keep_alive()
        self._arm_timer()

    async def _keep_alive(self) -> None:
        """Peers sent frames since the last tick (pings included): that is activity, so
        the session's TTL starts again, as it does on every append."""
        with contextlib.suppress(SessionExpired, SessionNotFound):
            await self.manager.storage.update_session_state(
                self.session_id, self.state, durable=False
            )

    # -- replay ------------------------------------------------------------------

    async def replay(self, after: int, through: int) -> AsyncIterator[list[Outbound]]:
        """Events in ``(after, through]`` in pages, from the ring when it still holds
        them, else from storage."""
        position = after
        while position < through:
            page = self._ring_page(position, through)
            if page is None:
                stored = await self.manager.storage.read_events(
                    self.session_id, after_seq=position, limit=min(REPLAY_PAGE, through - position)
                )
                page = [Outbound.for_event(s) for s in stored if s.seq <= through]
            if not page:
                return
            yield page
            position = page[-1].seq

    def _ring_page(self, after: int, through: int) -> list[Outbound] | None:
        ring = self.ring
        if not ring or ring[0].seq > after + 1:
            return None
        start = after + 1 - ring[0].seq
        count = min(REPLAY_PAGE, through - after)
        return list(itertools.islice(ring, start, start + count))
