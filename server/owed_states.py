"""OwedStates: the ``disconnected`` states that session actors retired still owing
their store, written once the store answers again (one queue per process: the
manager's).

A session parks even while its store fails (server/status.py): its actor holds it
``disconnected`` and writes the state at a later look. An outage longer than
``--disconnect-retention`` retired the actor with the state still unwritten, and the
store kept ``active`` or ``idle`` until some later attach: listings by state said so,
and cleanup took the session for a live one (r356). So a retiring actor that owes its
state hands it here (:meth:`OwedStates.owe`), and a task writes it once the store
answers: a round every ``retry_every`` seconds while some are owed, which ends at the
first failure (a store that fails costs one call a round, however many are owed; the
log tells the outage once, server/outage_log.py). Bounded in count and in bytes: past
either, a state is not kept (the log says so), and the store keeps what it has until
the session's next attach, or on a store one process holds, the next start's park.

A graceful stop writes what is still owed in one last round, within
``LAST_ROUND_SECONDS`` (:meth:`OwedStates.close`; logged with how many were written
and left). What is left then (the store still away), or at a kill, the store sets right
itself: SQLite's next start parks what it holds ``active`` or ``idle``; on Redis, the
sessions this process registered connections in stay recorded under its instance
(persistence/redis/orphans.py) until a survivor's dead-instance sweep, or the next
instance to start, parks them, a heartbeat after this process's last refresh. A
refresh drops this process's own entries past their deadline, so each heartbeat
records those it owes (:meth:`OwedStates.owing`: the queue's, and its parked actors'
not yet written, or under way) again first, with those whose leave is under way
(server/presence.py): killed right after Redis came back, before a round wrote them,
or while a last peer's leave or its park hung, it leaves them to that sweep too. One
list read before both calls: an actor that retires meanwhile hands its state to the
queue in the same step as it leaves the list of live ones, and was listed already.

What each owed state settled as is counted (``settled``; server/owed_parks.py):
``written``, ``already_parked`` (a sweep parked it first), ``dropped`` (nothing to
write), and the stop's line adds them up with what it ``left``.

Each write is fenced as the actor's own would be, so that it never lands over what
came since:
- not while this process has an actor for the session again (spawned by a later
  attach, a read): that actor owns the state; the one owed waits for it to retire;
- only on the session of the retired actor's epoch (one deleted or replaced is owed
  nothing), only over ``active`` or ``idle``, and not on an expired session;
- on a store processes share (Redis), in one step with its presence
  (``PresenceStore.park_many``, many in one call: server/owed_parks.py): not while
  another process's connections are attached (a newer attach elsewhere: the last of
  them writes it as it leaves, or, if their leave failed too, their process's own
  queue, or should it die, the survivors' sweep). This process's own connections
  whose leave failed in the outage are left again first, in the same step
  (``SharedPresence.failed_leaves``): else they would count until their heartbeat
  deadline, and hold the write back. Those it could not remember (past its cap) do
  count until then: while some may, a write they hold back is tried again, not taken
  for another process's to write (which left it ``active`` until its next attach);
- elsewhere, not over a write since the read that decided it
  (``unless_updated_since``).

The JSONL store writes state moves into its index at once (to disk with the next
checkpoint), so its actors owe none; SQLite's and Redis's fail with the store.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

import structlog

from bamboo_session.persistence.base import (
    InvalidTransition,
    SessionExpired,
    SessionNotFound,
    Storage,
    StorageError,
)
from bamboo_session.protocol.models import SessionState
from bamboo_session.tasks import cancel_and_wait

from .outage_log import OutageLog
from .owed_parks import ALREADY_PARKED, DROPPED, OUTCOMES, PARKED_AT_ONCE, WRITTEN, park_owed
from .presence import SharedPresence

if TYPE_CHECKING:
    from .actor import SessionActor

log = structlog.get_logger("bamboo_session.actor")

RETRY_EVERY: Final = 1.0  # seconds between rounds while states are owed
MAX_OWED: Final = 65_536  # states kept at most
MAX_OWED_BYTES: Final = 16 * 1024 * 1024  # and bytes, as ENTRY_BYTES + ids counts them
# What one owed state holds beyond its session id and epoch: a dict slot, the entry,
# the two strings' headers (CPython 3.11, 64-bit: some 250 bytes; rounded up).
ENTRY_BYTES: Final = 320
WRITTEN_AT_ONCE: Final = 32  # writes under way at once in a round
# Groups of parks under way at once on a shared store (server/owed_parks.py): this
# process packs the next while the store runs one.
GROUPS_IN_FLIGHT: Final = 2
# Seconds a graceful stop gives its last round: a store that hangs holds the stop no longer.
LAST_ROUND_SECONDS: Final = 3.0
_PARKED_ONLY = (SessionState.ACTIVE, SessionState.IDLE)
_LEFT_TO = "parked by the store's next start (SQLite), or a dead-instance sweep (Redis)"


class _Owed:
    __slots__ = ("epoch", "size")

    def __init__(self, session_id: str, epoch: str | None) -> None:
        self.epoch = epoch
        self.size = ENTRY_BYTES + len(session_id) + len(epoch or "")


_Group = list[tuple[str, _Owed]]


def owed_by(actors: Iterable[SessionActor]) -> list[tuple[str, str | None]]:
    """``(session_id, epoch)`` of each session parked by its actor here whose state the
    store is still owed (its write failed: written at a later look)."""
    return [
        (actor.status.session_id, actor.status.epoch)
        for actor in actors
        if actor.status.owed and not actor.room.outboxes
    ]


class OwedStates:
    """States owed to the store by actors that retired (module docstring)."""

    def __init__(
        self,
        storage: Storage,
        presence: SharedPresence | None,
        live: Callable[[str], object],
        retry_every: float = RETRY_EVERY,
        max_count: int = MAX_OWED,
        max_bytes: int = MAX_OWED_BYTES,
    ) -> None:
        self.storage = storage
        self.presence = presence
        self._live = live  # session id -> this process's actor of it, or None
        self.retry_every = retry_every
        self.last_round = LAST_ROUND_SECONDS  # seconds a graceful stop gives what is owed
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        # How the owed settled so far, by outcome (server/owed_parks.py: WRITTEN,
        # ALREADY_PARKED, DROPPED), counted as they go: a stop's last round may be cut
        # short, and its log adds them up.
        self.settled: collections.Counter[str] = collections.Counter()
        self._owed: dict[str, _Owed] = {}
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.outages = OutageLog("owed state", log)
        # The sessions whose live actors here parked them and still owe the store their
        # state (the manager's, by owed_by), recorded as this process's too.
        self.owed_by_actors: Callable[[], list[tuple[str, str | None]]] = list
        if presence is not None:  # recorded as this process's at each heartbeat until written
            presence.owed = self.owing

    def __len__(self) -> int:
        return len(self._owed)

    @property
    def written(self) -> int:
        """States written so far."""
        return self.settled[WRITTEN]

    def entries(self) -> list[tuple[str, str | None]]:
        """The sessions owed here, each ``(session_id, epoch)``."""
        return [(session_id, owed.epoch) for session_id, owed in self._owed.items()]

    def owing(self) -> list[tuple[str, str | None]]:
        """Every session this process owes a state, here or by a live actor: recorded
        as this process's at each presence heartbeat (server/presence.py), for a
        survivor to park should it die before it writes them."""
        return self.entries() + self.owed_by_actors()

    def owe(self, session_id: str, epoch: str | None) -> None:
        """A retiring actor's session is owed ``disconnected``: written once the store
        answers (not kept past the bounds, nor once the manager closed)."""
        if self._closed:
            return
        owed = _Owed(session_id, epoch)
        if (held := self._owed.get(session_id)) is not None:
            self._drop(session_id, held)
        if len(self._owed) >= self.max_count or self.bytes + owed.size > self.max_bytes:
            error = f"{len(self._owed)} states, {self.bytes} bytes held"
            self.outages.failed("queue", "an owed state is not kept: too many are owed", error)
            return
        self.outages.worked("queue")
        self._owed[session_id] = owed
        self.bytes += owed.size
        if self._task is None:
            # A context of its own: not the retiring actor's, whose session id its
            # lines would carry.
            self._task = asyncio.create_task(
                self._rounds(), name="bamboo-owed-states", context=contextvars.Context()
            )

    async def close(self) -> None:
        """Stops the rounds, after a last one within ``last_round`` seconds; what is
        still owed then is left to the store's own recovery (module docstring)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)
        if not self._owed:
            return
        owed, before = len(self._owed), self.settled.copy()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.last_round):  # not wait_for: 3.11's drops a cancel
                await self.write_owed()
        left = len(self._owed)
        # owed == written + already_parked + dropped + left
        fields = {outcome: self.settled[outcome] - before[outcome] for outcome in OUTCOMES}
        fields = {"owed": owed, **fields, "left": left}
        if left:
            log.warning("owed states left at stop", **fields, then=_LEFT_TO)
        else:
            log.info("owed states written at stop", **fields)

    async def _rounds(self) -> None:
        try:
            while self._owed:
                await asyncio.sleep(self.retry_every)
                await self.write_owed()
        finally:
            self._task = None

    async def write_owed(self) -> int:
        """One round: each state owed written, or dropped when nothing is owed any more,
        the first alone, then in groups (on a shared store, of PARKED_AT_ONCE in one
        call, GROUPS_IN_FLIGHT under way at once, so that this process packs one while
        the store runs another; else WRITTEN_AT_ONCE under way at once), until the
        store fails (those that failed are tried last next round). How many were
        written."""
        settled: collections.Counter[str] = collections.Counter()
        pending = list(self._owed.items())
        shared = self.presence is not None
        at_once = PARKED_AT_ONCE if shared else WRITTEN_AT_ONCE
        start, size, at_most = 0, 1, 1  # the first alone: a store still failing costs one call
        running: collections.deque[tuple[_Group, asyncio.Task[list[object]]]] = collections.deque()
        failed: StorageError | None = None
        try:
            while running or (failed is None and start < len(pending)):
                while failed is None and start < len(pending) and len(running) < at_most:
                    group = pending[start : start + size]
                    start, size = start + size, at_once
                    running.append((group, asyncio.create_task(self._settle_group(group))))
                group, task = running[0]  # still among them if cancelled while awaited
                outcomes = await task
                running.popleft()
                failed = self._settled(group, outcomes, settled) or failed
                at_most = GROUPS_IN_FLIGHT if shared else 1
        finally:
            await cancel_and_wait(*(task for _, task in running))  # a stop cut the round short
        if failed is not None:
            self.outages.failed("write", "writing an owed state failed", str(failed))
        else:
            self.outages.worked("write")  # a whole round without a failure
        if written := settled[WRITTEN]:
            fields = {outcome: settled[outcome] for outcome in OUTCOMES}
            log.info("owed states written", **fields, owed=len(self._owed))
        return written

    def _settled(
        self, group: _Group, outcomes: list[object], settled: collections.Counter[str]
    ) -> StorageError | None:
        """Each one of ``group`` dropped as its outcome says, or put last if the store
        failed it (the first such failure, returned)."""
        failed: StorageError | None = None
        logged: object = None
        for (session_id, owed), outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, StorageError):
                failed = failed or outcome
                self._to_the_end(session_id, owed)
                continue
            if isinstance(outcome, BaseException):  # a fault of ours: not tried again
                if outcome is not logged:  # a group's, once
                    log.error("writing an owed state failed", exc_info=outcome)
                logged, outcome = outcome, DROPPED
            if isinstance(outcome, str):
                settled[outcome] += 1
                self.settled[outcome] += 1  # as it goes: a stop's last round may be cut short
                self._drop(session_id, owed)
        return failed

    async def _settle_group(self, group: _Group) -> list[object]:
        """Each one's outcome (server/owed_parks.py), or the exception it raised."""
        if self.presence is not None:
            pairs = [(session_id, owed.epoch) for session_id, owed in group]
            try:
                return list(await park_owed(self.presence, self._live, pairs))
            except Exception as exc:  # the store's failure, or a fault of ours: each one's
                return [exc] * len(group)
        settling = (self._settle(session_id, owed) for session_id, owed in group)
        return list(await asyncio.gather(*settling, return_exceptions=True))

    def _to_the_end(self, session_id: str, owed: _Owed) -> None:
        """Tried last next round: one whose session alone fails (a key of its own
        that something else wrote over) must not hold up every other round after
        round, as the first one tried."""
        if self._owed.get(session_id) is owed:
            del self._owed[session_id]
            self._owed[session_id] = owed

    def _drop(self, session_id: str, owed: _Owed) -> None:
        if self._owed.get(session_id) is owed:  # not one owed again since
            del self._owed[session_id]
            self.bytes -= owed.size

    async def _settle(self, session_id: str, owed: _Owed) -> str | None:
        """On a store one process holds: writes the state owed if the fence lets it;
        its outcome (server/owed_parks.py), None to try again at the next round.
        StorageError if the store fails."""
        if self._live(session_id) is not None:
            return None  # its actor now: the state is its own to write
        storage = self.storage
        metadata = await storage.get_metadata(session_id)
        if metadata is None or (owed.epoch is not None and metadata.epoch != owed.epoch):
            return DROPPED
        if metadata.state == SessionState.DISCONNECTED:
            return ALREADY_PARKED
        if metadata.state not in _PARKED_ONLY or metadata.is_expired(storage.now()):
            return DROPPED
        if self._live(session_id) is not None:
            return None  # spawned during the read
        with contextlib.suppress(SessionExpired, SessionNotFound, InvalidTransition):
            stored = await storage.update_session_state(
                session_id,
                SessionState.DISCONNECTED,
                epoch=owed.epoch,
                unless_updated_since=metadata.updated_at,
            )
            return WRITTEN if stored.state == SessionState.DISCONNECTED else DROPPED
        return DROPPED
