"""SessionActor: the one task that owns a live session in this process.

Commands (server/commands.py) arrive in its inbox and are handled in batches: a run of
appends becomes one ``append_events`` call (one group commit), whose results answer the
requesters. The items of a peer's ``batch`` frame are such appends, queued together and
never split between two calls, so that the store takes them whole or not at all.
Fan-out does not come from those results but from the store: while connections are
attached the actor follows the session with ``storage.subscribe``, and hands each event
to its :class:`~.room.SessionRoom`, which sends it to every connection but its
publisher's: events another process appended (a shared store) reach viewers alike.

A lone append to an actor with nothing to do, on a store whose appends are in process,
runs in its sender's task instead (``append_now``): the same step, under the same
exclusion, one task wake-up fewer.

A parked actor (no connection) holds no task, no subscription and a small ring;
idempotency is the store's. Here: the task, the appends, the delivery (the hot path);
the other commands and the timer's looks are in server/control.py, the actor's end
(retirement, the commands left answered) in server/actor_end.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable
from typing import Final

import structlog

from bamboo_session.persistence.base import SessionFull, Storage, StorageError
from bamboo_session.persistence.capabilities import AppendsInProcess
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import SessionMetadata, SessionState, StoredEvent
from bamboo_session.wakeup import Wakeup

from .actor_end import finish, reject_late
from .append_outcomes import append_failed, feed_repeated, over_cap, refuse
from .budget import MemoryBudget
from .commands import Append, Command, Tick, behind_doubt
from .control import answer_stopped, arm_timer, handle, store_failed
from .following import BATCH_MAX, Following
from .inbox import Inbox
from .manager_config import SessionManagerConfig
from .metrics import Metrics
from .presence import LOCAL, LocalPresence
from .readiness import AppendHealth
from .replay import ReplayReads
from .room import SessionRoom
from .status import SessionStatus, held_state
from .timers import ActivityTimer

log = structlog.get_logger("bamboo_session.actor")

# Read once: a member read off its class goes through EnumType.__getattr__ on Python
# 3.11 (about 850 machine instructions), and every append asks (models.py's _EXPIRED).
_IDLE: Final = SessionState.IDLE
# A step in a sender's task cancelled with the actor's task: that task goes on.
_STEP_STOPPED: Final = "the session's actor was stopped"


class SessionActor:
    """One live session: its inbox, its room, and a task that runs while connections
    are attached or commands wait (a parked crowd costs no tasks)."""

    __slots__ = (
        "accepting",
        "config",
        "finished",
        "following",
        "health",
        "inbox",
        "metrics",
        "on_retired",
        "presence",
        "replay_reads",
        "room",
        "session_id",
        "status",
        "stepping",
        "steps_inline",
        "storage",
        "task",
        "timer",
        "wakeup",
    )

    def __init__(
        self,
        metadata: SessionMetadata,
        storage: Storage,
        config: SessionManagerConfig,
        metrics: Metrics,
        on_retired: Callable[[SessionActor], None],
        presence: LocalPresence = LOCAL,
        budget: MemoryBudget | None = None,
        health: AppendHealth | None = None,
    ) -> None:
        self.session_id = metadata.id
        self.health = health if health is not None else AppendHealth()
        self.storage = storage
        self.config = config
        self.metrics = metrics
        self.on_retired = on_retired
        self.presence = presence  # session-wide, on a store processes share (presence.py)
        shared = presence.shared
        held, ttl, epoch = held_state(metadata.state, shared), metadata.ttl, metadata.epoch
        self.status = SessionStatus(metadata.id, held, storage, ttl, epoch, shared)
        self.status.owed = held != metadata.state  # parked at its first look, if not before
        self.room = SessionRoom(
            metadata.epoch, metadata.last_seq, config.ring_size, config.ring_bytes, budget
        )
        self.replay_reads = ReplayReads(self.room, storage, self.session_id, metrics)
        self.following = Following(storage, self.session_id, self._wake)
        self.accepting = True
        self.finished = False
        self.inbox = Inbox(config.inbox_limit, config.inbox_bytes, budget)
        self.task: asyncio.Task[None] | None = None
        self.wakeup = Wakeup()  # while the task waits for work (_run)
        # Not where appends are network round trips (Redis): the reader would wait on them.
        self.steps_inline = isinstance(storage, AppendsInProcess)
        self.stepping: asyncio.Task[object] | None = None  # the sender's, in append_now
        self.timer = ActivityTimer(lambda generation: self.post(Tick(generation)))

    @property
    def published_seq(self) -> int:
        return self.room.published_seq

    @property
    def state(self) -> SessionState:
        return self.status.state

    # -- commands in ---------------------------------------------------------------

    def post(self, command: Command) -> None:
        """Queue a command from the manager or a timer; never waits."""
        if self.finished:
            reject_late(self, command)
            return
        self.inbox.append(command)
        self._wake()

    async def room_for(self, count: int) -> bool:
        """Waits for room for ``count`` more commands (back-pressure); whether it takes them."""
        if not self.inbox.may_post(count):
            await self.inbox.wait_for_room(count)
        return self.accepting

    def post_batch(self, appends: list[Append]) -> None:
        """Queue a batch's items together: nothing comes between them."""
        if self.finished:
            for append in appends:
                reject_late(self, append)  # their reply sends the first refusal, once
            return
        self.inbox.extend(appends)
        self._wake()

    def _wake(self) -> None:
        if self.stepping is not None:
            return  # the step under way (append_now) looks for work as it ends
        if self.wakeup.set():
            return  # the task waits for work, or was just woken from it: it takes this
        task = self.task
        if task is None or task.done():
            # A fresh context: the actor outlives the connection that happened to wake
            # it, and must not log with that connection's id.
            self.task = asyncio.create_task(
                self._run(), name=f"session-actor:{self.session_id}", context=contextvars.Context()
            )

    def start(self) -> None:
        arm_timer(self)

    # -- the task -------------------------------------------------------------------

    async def _run(self) -> None:
        """Handles commands and delivers events until nothing is left to do and no
        connection is attached; retires the actor once it stops accepting (closed,
        stopped, parked too long, or failed)."""
        structlog.contextvars.bind_contextvars(session_id=self.session_id)
        try:
            while self.accepting:
                if self.following.ready():
                    if not self._give_at_hand():
                        await self._deliver()
                elif len(self.inbox):
                    await self.handle_taken()
                elif self.room.outboxes:
                    # Connections attached: the task waits here, not ending (no task
                    # per command); awaited in place, no coroutine made per wait.
                    await self.wakeup.wait()
                else:
                    self.inbox.release()
                    self.task = None  # nothing to run until the next command
                    break
        except asyncio.CancelledError:
            self.accepting = False
            self.cancel_step()
            self.room.close_all(CloseCode.SERVICE_RESTART, "server restarting")
            raise
        except Exception:
            log.exception("session actor failed")
            self.accepting = False
            self.room.close_all(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            if not self.accepting and not self.finished:
                await finish(self)

    # -- commands -------------------------------------------------------------------

    async def handle_taken(self) -> None:
        """The commands taken together: each run of appends in one store append."""
        batch = self.inbox.take_batch(BATCH_MAX)
        appends: list[Append] = []
        try:
            for command in batch:
                if isinstance(command, Append):
                    origin = command.origin
                    if origin is None or origin.closing is None or not behind_doubt(command):
                        appends.append(command)
                    continue
                if appends:
                    await self.append(appends)
                    appends = []
                try:
                    await handle(self, command)
                except StorageError as exc:
                    store_failed(self, command, exc)
            if appends:
                await self.append(appends)
        except asyncio.CancelledError:
            for command in batch:
                answer_stopped(command, self.session_id)
            raise
        finally:
            self.inbox.finished(batch)

    def takes_now(self) -> bool:
        """Whether a lone append may be handled now in its sender's task (append_now):
        the store's appends are in process, and the task waits for work, unwoken since
        (nothing queued, nothing in flight, nothing owed its viewers)."""
        if self.stepping is not None or not self.steps_inline:
            return False
        return self.accepting and self.wakeup.unwoken()

    async def append_now(self, command: Append, step: asyncio.Task[object]) -> None:
        """The actor's step for one append, stored, answered and delivered as ``_run``
        would, in its sender's task (``step``, a peer's reader, which calls it): only
        when :meth:`takes_now`, with no await since. Nothing wakes the actor's task
        meanwhile (``_wake``): what comes is handled, in order, after it. The actor's
        task, cancelled past a stop's grace, cancels the step (not ``step``, which reads
        on to its 1012); the event may be stored, unanswered (its peer sends it again)."""
        self.stepping = step
        inbox = self.inbox
        inbox.hold(command)
        try:
            await self.append([command])
            self._give_at_hand()
        except asyncio.CancelledError as exc:
            if exc.args != (_STEP_STOPPED,) or step.uncancel():
                raise  # not (only) the actor's stop: the sender's task was cancelled
        except Exception:  # as _run's: the session's connections close, it retires
            log.exception("session actor failed")
            self.accepting = False
            self.room.close_all(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self.stepping = None
            inbox.let_go(command)
            if not self.accepting or len(inbox) or self.following.ready():
                self._wake()

    def cancel_step(self) -> None:
        if self.stepping is not None:
            self.stepping.cancel(_STEP_STOPPED)

    async def append(self, appends: list[Append]) -> None:
        """Store appends taken together, in one store append, and answer each."""
        one = len(appends) == 1  # most appends: no comprehension's function made and called
        items = [(appends[0].event, appends[0].key)] if one else [(c.event, c.key) for c in appends]
        metrics, health = self.metrics, self.health
        full: SessionFull | None = None
        started = time.monotonic()
        reported = health.began(id(items), started)  # /readyz sees it if the store holds it
        try:
            # Fenced by the epoch of the log this actor serves: should the session have
            # been deleted or replaced by another process, its notice not yet here, the
            # append is refused (SessionNotFound) instead of landing in the new log.
            results = await self.storage.append_events(
                self.session_id, items, epoch=self.room.epoch
            )
        except SessionFull as exc:  # not a failure of the store: /readyz stays quiet
            full = exc
        except (StorageError, ValueError) as exc:
            append_failed(self, exc, len(appends))
            for command in appends:
                refuse(self, command, exc)
            return
        finally:
            health.ended(id(items))
        if full is not None:
            return await over_cap(self, appends, full)
        now = time.monotonic()
        health.appended(self.session_id, now, reported)
        metrics.group_commit_events.observe(len(items))
        metrics.group_commit_seconds.observe(now - started)
        observe_ack = metrics.append_ack_seconds.observe
        if self.status.state == _IDLE and self.room.outboxes:
            # Before the acks: a peer that sees its ack sees the session active again.
            with contextlib.suppress(StorageError):  # the next append tries again
                await self.status.become(SessionState.ACTIVE)
        fresh = 0
        following = self.following.active
        if len(results) != len(appends):  # zip(strict=True)'s test, without its keyword's cost
            raise ValueError(f"{len(results)} results for {len(appends)} appends")
        for command, result in zip(appends, results):  # noqa: B905 (tested above)
            if not result.duplicate:
                fresh += 1
                if following and command.origin is not None:
                    self.room.expect(result.seq, command.origin)
            command.answer(result)
            if command.received:
                observe_ack(now - command.received)
        if not following and fresh:
            # Nobody watches: the ring would miss these events, so it starts after them.
            self.room.restart_at(max(r.seq for r in results if not r.duplicate))
        self.metrics.events_appended.inc(fresh)
        self.timer.note_traffic()

    # -- live events from the store -------------------------------------------------

    def unfollow(self) -> None:
        """Stops following the store's events (no connection left to hand them to)."""
        self.following.stop()
        self.room.origins.clear()

    async def _deliver(self) -> None:
        taken = await self.following.take(BATCH_MAX)
        if isinstance(taken, list):
            self.give(taken)
        elif taken is not None:
            code, reason, ended = taken
            closed = ended == "closed"
            if closed:
                self.status.state = SessionState.CLOSED
            self.end(code, reason, replays_go_on=closed)

    def _give_at_hand(self) -> bool:
        """Gives what this process appended, at hand, with no coroutine; False if none is.
        Not in ``_run``: a local there would hold the last batch while the session idles."""
        events = self.following.take_buffered(BATCH_MAX)
        if events:
            self.give(events)
        return bool(events)

    def give(self, events: list[StoredEvent]) -> None:
        if repeated := self.room.deliver(events):
            feed_repeated(self, events, repeated)
        # Once per batch, for its oldest event: the most its viewers waited (from its ts).
        self.metrics.delivery_lag_seconds.observe(self.storage.seconds_since(events[0].ts))

    def end(self, code: CloseCode, reason: str, *, replays_go_on: bool = False) -> None:
        """Closes every connection (``SessionRoom.close_all``) and retires."""
        self.room.close_all(code, reason, replays_go_on=replays_go_on)
        self.accepting = False
