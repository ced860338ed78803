"""Session-wide presence, for a server whose store several processes share (a store
with a ``PresenceStore``, persistence/presence.py: Redis).

:class:`SharedPresence` is this process's side of it: which of its connections it has
registered in the store (the one owner of that), one heartbeat task that refreshes
them all every ``heartbeat / 3`` seconds, and the notices of other processes' joins
and leaves, handed on (the manager posts each to the session's actor, whose room sends
a ``presence`` frame). A task of its own, as often, sweeps other processes that died,
parking the sessions none of their connections is left in (persistence/redis/orphans.py):
not the heartbeat's, since parking a big dead instance takes seconds, and a heartbeat
waiting on it let this process's own connections run out, its live sessions then parked
by the others (r333). Actors register a connection when it attaches and unregister it
when it leaves; the counts the store answers go into ``welcome`` and ``presence``.

A failure of the store here never fails an attach: the room's own count stands in, the
heartbeat registers a connection whose join failed, and one whose leave failed expires
after the heartbeat, unless a later call for its session, once the store answers, leaves
it again first (server/lingering_leaves.py; a leave that failed is remembered for a
heartbeat: until then it would swell the session's count, and keep a state write that
waits for no connection, server/owed_states.py, waiting). A bounded number of them
(server/failed_leaves.py): past it, one more is not remembered, and the log says so once
an outage (``failed presence leaves not remembered``); it counts until its deadline. A
store that fails (Redis away, or refusing writes: ``MISCONF`` when its disk is full)
fails every join and leave, each heartbeat and each sweep: the first failure of each
kind is logged, the others only counted (server/outage_log.py), until a call of that
kind works again, which is said once too (or, still failing, at the stop). A warning per
attach and per heartbeat would flood the log just when the store is in trouble
(bench/redis_disk_full.py: three or four lines a second for each instance).
Without a PresenceStore (memory, jsonl, sqlite) the server has none of this, and each
room counts its own connections.

Every connection is registered with the epoch of its actor's session, and its joins,
leaves and refreshes are fenced by it: an actor whose session was deleted or replaced
under its id by another process (its notice not here yet) never has its connections
counted in, nor announced to, the session that took the id. Its join is then
SessionNotFound, as its session's other writes are (the attach fails as on a deleted
session); its leaves are no-ops, and its refreshes register nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Iterator, Sequence

import structlog

from bamboo_session.persistence.base import SessionNotFound, StorageError
from bamboo_session.persistence.presence import Held, PresenceNotice, PresenceStore
from bamboo_session.protocol.models import SessionMetadata
from bamboo_session.tasks import cancel_and_wait

from .failed_leaves import FailedLeaves
from .lingering_leaves import LingeringLeaves
from .outage_log import OutageLog

__all__ = [
    "LOCAL",
    "LocalPresence",
    "PresenceNotice",
    "SharedPresence",
    "overlay_live",
    "shared_presence",
]

log = structlog.get_logger("bamboo_session.presence")


class LocalPresence:
    """No presence beyond this process: each room counts its own connections."""

    # Whether other processes may hold connections to this process's sessions: on a
    # store only this process holds, a session with none here has none at all.
    shared = False

    async def join(
        self, session_id: str, connection_id: str, role: str, epoch: str | None = None
    ) -> int | None:
        return None

    async def leave(self, session_id: str, connection_id: str, role: str) -> int | None:
        return None

    async def leave_session(self, session_id: str, epoch: str | None = None) -> None:
        return None

    async def count(self, session_id: str) -> int:
        """Connections attached to the session in other processes too (0: none, or
        no presence beyond this process)."""
        return 0


LOCAL = LocalPresence()


class SharedPresence(LocalPresence, LingeringLeaves):
    """This process's connections in a shared store's presence (module docstring)."""

    shared = True

    def __init__(
        self,
        store: PresenceStore,
        notify: Callable[[PresenceNotice], None],
        registered_again: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self._notify = notify
        # Told of each session some of whose connections a refresh registered again.
        self._registered_again = registered_again
        # session -> connection -> (role, epoch): what this process registered in the
        # store, each with the epoch of its actor's session.
        self._held: dict[str, dict[str, tuple[str, str | None]]] = {}
        self._refreshing: asyncio.Event | None = None  # set once a refresh under way ends
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.refreshes = 0
        # Kinds of call ("join", "leave", "heartbeat", "sweep") failing now: the first
        # failure of each logged, the others counted (server/outage_log.py).
        self.outages = OutageLog("presence", log)
        # Connections whose leave the store failed: the store counts them until their
        # heartbeat deadline, which a write that waits for no connection would wait
        # for (leave_lingering; the owed states' parks leave them in their own step).
        self.failed_leaves = FailedLeaves(store.heartbeat)
        # The sessions this process owes a state, ``(id, epoch)`` (the manager's
        # OwedStates.owing): recorded as its own at each heartbeat, before the
        # refresh drops its entries past their deadline (refresh).
        self.owed: Callable[[], Sequence[tuple[str, str | None]]] = tuple
        # Sessions, ``(id, epoch)``, with a leave under way (how many): out of
        # ``_held``, not yet owed (the actor parks after), recorded too (refresh).
        self._leaving: collections.Counter[tuple[str, str | None]] = collections.Counter()

    def start(self) -> None:
        self.store.on_presence(self._on_notice)
        self._task = asyncio.create_task(self._heartbeat(), name="bamboo-presence-heartbeat")
        self._sweeper = asyncio.create_task(self._sweeps(), name="bamboo-presence-sweep")

    async def stop(self) -> None:
        self.store.on_presence(None)
        tasks = (self._task, self._sweeper)
        self._task = self._sweeper = None
        await cancel_and_wait(*tasks)  # a refresh or a park may be in redis-py's send

    def held(self, session_id: str) -> int:
        """This process's connections registered for the session."""
        return len(self._held.get(session_id, ()))

    # -- what actors ask ----------------------------------------------------------

    async def join(
        self, session_id: str, connection_id: str, role: str, epoch: str | None = None
    ) -> int | None:
        """Register a connection to the session of ``epoch``; the session-wide count,
        or None if the store failed. SessionNotFound if the session under the id is
        of another epoch (nothing registered)."""
        self._held.setdefault(session_id, {})[connection_id] = (role, epoch)
        await self._lingering_left(session_id)
        try:
            count = await self.store.join(session_id, connection_id, role, epoch=epoch)
        except SessionNotFound:
            self._drop(session_id, connection_id)
            raise
        except StorageError as exc:
            self._failed("join", "presence join failed; the heartbeat registers it", exc)
            return None
        self._worked("join")
        return count

    async def leave(self, session_id: str, connection_id: str, role: str) -> int | None:
        """Unregister a connection; the session-wide count, or None if the store failed
        (or the connection's session is gone: no count of another session's)."""
        if (held := self._drop(session_id, connection_id)) is None:
            return None
        with self._left_under_way(session_id, held[1]):
            await self._refreshed()
            await self._lingering_left(session_id)
            try:
                count = await self.store.leave(session_id, connection_id, role, epoch=held[1])
            except SessionNotFound:
                return None  # deleted or replaced: nothing of its connections is left there
            except StorageError as exc:
                self._failed("leave", "presence leave failed; it expires after the heartbeat", exc)
                self._linger(session_id, [(connection_id, role)], held[1])
                return None
        self._worked("leave")
        return count

    async def leave_session(self, session_id: str, epoch: str | None = None) -> None:
        """Unregister every connection still registered for the session of ``epoch``
        (its actor closed them all: the session ended, or the server is stopping).
        Not those of another epoch: the actor of a session that replaced it may
        have registered its own meanwhile."""
        held = self._held.get(session_id, {})
        leaving = [(c, role) for c, (role, of) in held.items() if epoch is None or of == epoch]
        if not leaving:
            return
        for connection_id, _ in leaving:
            self._drop(session_id, connection_id)
        with self._left_under_way(session_id, epoch):
            await self._refreshed()
            try:
                await self.store.leave_all(session_id, leaving, epoch=epoch)
            except SessionNotFound:
                return
            except StorageError as exc:
                message = "presence leave failed; they expire after the heartbeat"
                self._failed("leave", message, exc)
                self._linger(session_id, leaving, epoch)
                return
        self._worked("leave")

    @contextlib.contextmanager
    def _left_under_way(self, session_id: str, epoch: str | None) -> Iterator[None]:
        """The session recorded as this process's at each heartbeat while its
        connections' leave is under way (refresh)."""
        key = (session_id, epoch)
        self._leaving[key] += 1
        try:
            yield
        finally:
            if self._leaving[key] == 1:
                del self._leaving[key]
            else:
                self._leaving[key] -= 1

    def _drop(self, session_id: str, connection_id: str) -> tuple[str, str | None] | None:
        """Forget a connection held; its ``(role, epoch)``, or None if not held."""
        held = self._held.get(session_id)
        entry = None if held is None else held.pop(connection_id, None)
        if held is not None and not held:
            del self._held[session_id]
        return entry

    async def count(self, session_id: str) -> int:
        """The session-wide count; StorageError if the store fails."""
        await self._lingering_left(session_id)
        return (await self.store.counts([session_id]))[0]

    async def counts(self, session_ids: Sequence[str]) -> list[int]:
        """Session-wide connection counts (listings, metadata)."""
        return await self.store.counts(session_ids) if session_ids else []

    # -- the heartbeat, and notices ---------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.store.heartbeat / 3
        while True:
            await asyncio.sleep(interval)
            if self._held or self._leaving or self.owed():
                await self.refresh()

    async def _sweeps(self) -> None:
        interval = self.store.heartbeat / 3
        while True:
            await asyncio.sleep(interval)
            await self.sweep_dead()

    async def sweep_dead(self) -> None:
        """Park the sessions of the instances that died: whether or not this process
        holds connections, or ever held those sessions (a restarted instance sweeps
        the one it replaces)."""
        try:
            await self.store.sweep_dead()
        except StorageError as exc:
            self._failed("sweep", "presence sweep of dead instances failed", exc)
        except Exception:  # what other instances wrote, read back: the next sweep tries again
            log.exception("presence sweep of dead instances failed unexpectedly")
        else:
            self._worked("sweep")

    async def refresh(self) -> None:
        """Refresh every connection this process holds, in one round trip; first, in
        one more, the sessions it owes a state or has a leave under way in (else a
        refresh dropped their entries past their deadline, and a kill before their
        park left them ``active``, no survivor's sweep knowing of them; a park under
        way is owed, server/status.py: from a leave to its park, always recorded)."""
        owed = [*self.owed(), *self._leaving]
        done = self._refreshing = asyncio.Event()
        by_epoch: dict[tuple[str, str | None], list[tuple[str, str]]] = {}
        for session_id, held in self._held.items():
            for connection_id, (role, epoch) in held.items():
                by_epoch.setdefault((session_id, epoch), []).append((connection_id, role))
        snapshot = [Held(sid, conns, epoch) for (sid, epoch), conns in by_epoch.items()]
        again: Sequence[str] = ()
        try:
            if owed:
                await self.store.hold(owed)
            if snapshot:
                again = await self.store.refresh(snapshot)
            self.refreshes += 1
            self._worked("heartbeat")
        except StorageError as exc:
            self._failed("heartbeat", "presence heartbeat failed", exc)
        finally:
            self._refreshing = None
            done.set()
        if self._registered_again is not None:
            for session_id in again:
                self._registered_again(session_id)

    def _failed(self, kind: str, event: str, exc: StorageError) -> None:
        self.outages.failed(kind, event, str(exc))

    def _worked(self, kind: str) -> None:
        self.outages.worked(kind)

    async def _refreshed(self) -> None:
        """A leave waits for the refresh under way, which could otherwise register
        again a connection whose leave overtook it."""
        refreshing = self._refreshing
        if refreshing is not None:
            await refreshing.wait()

    def _on_notice(self, notice: PresenceNotice) -> None:
        # This process announced its own joins and leaves itself; and its rooms know
        # better than another process whether a connection of theirs is still there.
        if notice.instance == self.store.instance and not notice.expired:
            return
        if notice.connection_id in self._held.get(notice.session_id, ()):
            return
        self._notify(notice)


def shared_presence(
    storage: object,
    notify: Callable[[PresenceNotice], None],
    registered_again: Callable[[str], None] | None = None,
) -> SharedPresence | None:
    """The server's presence for ``storage``: shared if the store offers it, else None
    (each room counts its own connections)."""
    store = getattr(storage, "presence", None)
    if not isinstance(store, PresenceStore):
        return None
    return SharedPresence(store, notify, registered_again)


async def overlay_live(
    found: list[SessionMetadata],
    shared: SharedPresence | None,
    here: Callable[[str], int],
) -> None:
    """Sets each one's live connection count: every process's on a shared store, else
    this process's (``here``, by session id)."""
    if shared is not None:
        counts = await shared.counts([metadata.id for metadata in found])
        for metadata, count in zip(found, counts, strict=True):
            metadata.connections = count
        return
    for metadata in found:
        metadata.connections = here(metadata.id)
