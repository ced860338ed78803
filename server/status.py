"""SessionStatus: a live session's state as its actor keeps it (``active``, ``idle``,
``disconnected``, ``closed``), each change written to the store, and the activity that
keeps the session's TTL sliding. A session parks (``disconnected``) even while its store
fails: the state it could not write is owed, and written at the actor's next look."""

from __future__ import annotations

import contextlib
from datetime import datetime

import structlog

from bamboo_session.persistence.base import (
    InvalidTransition,
    SessionClosed,
    SessionExpired,
    SessionNotFound,
    Storage,
    StorageError,
)
from bamboo_session.persistence.feed import CLOSED, DELETED
from bamboo_session.protocol.models import SessionMetadata, SessionState

from .outage_log import OutageLog

log = structlog.get_logger("bamboo_session.actor")

EXPIRED = "expired"  # how a session ended that check() found expired (DELETED: gone)

# How long after the session's expiry its parked look comes: a timer that fires a
# moment early would find it alive, and look once more.
PAST_EXPIRY = 0.05

# Stored states that another process may write while this one's peers are busy.
_PAUSED = (SessionState.IDLE, SessionState.DISCONNECTED)


def held_state(stored: SessionState, shared: bool) -> SessionState:
    """The state an actor spawned with no connection holds for a session ``stored`` so:
    as stored on a store other processes share (theirs may be attached); else, for a
    stored ``active`` or ``idle``, ``disconnected`` (owed to the store), since no
    connection of any process can be attached: its server died with them."""
    if shared or stored not in (SessionState.ACTIVE, SessionState.IDLE):
        return stored
    return SessionState.DISCONNECTED


def attach_is_activity(state: SessionState, shared: bool, attached_here: bool) -> bool:
    """An attach to a session with no connection, or an idle one, is activity
    (docs/protocol.md). On a store only this process holds, no connection is none
    here (``attached_here``), whatever state the store kept (a server killed with
    peers attached left it ``active``); on one processes share (``shared``), none in
    the whole session, as its ``state`` says (presence keeps it ``active`` while any
    process's connections are attached)."""
    if not shared and not attached_here:
        return True
    return state != SessionState.ACTIVE


class SessionStatus:
    __slots__ = (
        "epoch",
        "expires_at",
        "idle_elsewhere",
        "idle_written_at",
        "owed",
        "session_id",
        "shared",
        "state",
        "storage",
        "ttl",
        "written_at",
    )

    def __init__(
        self,
        session_id: str,
        state: SessionState,
        storage: Storage,
        ttl: int | None = None,
        epoch: str | None = None,
        shared: bool = False,
    ) -> None:
        self.session_id = session_id
        # Other processes write the session too (Redis): its stored activity is weighed
        # with this one's quiet, by the store's clock (``Storage.now``).
        self.shared = shared
        self.state = state
        self.storage = storage
        self.ttl = ttl  # seconds of inactivity before it expires; None: never
        # Every write is fenced by the epoch of the session this actor serves: one
        # deleted or replaced by another process (its notice not yet here) is
        # SessionNotFound to them, and the session that took its id is left alone.
        self.epoch = epoch
        self.owed = False  # the store has not taken ``state`` (see park and save)
        # Held idle as another process wrote it while this one's peers had sent frames
        # within idle_timeout: a frame of theirs after it makes the session active again
        # at the look (on one process, a ping leaves an idle session idle).
        self.idle_elsewhere = False
        # The stored ``updated_at`` of that idle, as the look that took it read it: a
        # park written over it since hides, from the metadata alone, activity recorded
        # between the two (store times, compared with store times).
        self.idle_written_at: datetime | None = None
        # The ``updated_at`` of the last state this status wrote (None: unknown), for
        # undoing that move only if nothing wrote the session since (control.given_up).
        self.written_at: datetime | None = None
        # When the session expires, as the store said when it parked or at its last
        # look since (None: unknown, or never): the next look comes then, not later.
        self.expires_at: datetime | None = None

    async def become(
        self,
        state: SessionState,
        unless_updated_since: datetime | None = None,
        *,
        refused_if_expired: bool = False,
    ) -> SessionMetadata | None:
        """Change to ``state`` (InvalidTransition if it may not), in the store too; the
        metadata the store holds after the change (None if nothing was written). With
        ``unless_updated_since`` (the ``updated_at`` this actor read), not over a write
        since (another process's activity or state): the store left the session as it
        was, and so does this actor (the metadata returned is the store's). An expired
        session takes the state in memory only, or, ``refused_if_expired`` (a peer's
        request, answered ``not_found``), raises SessionExpired and keeps its own."""
        if state == self.state:
            return None
        self.state.check_transition(state)
        stored = None
        try:
            stored = await self._write(state, unless_updated_since)
        except SessionExpired:
            if refused_if_expired:
                raise
            # Expired under our feet: the state stays in memory only, and cleanup
            # removes the session; a state change is not activity that revives it.
            log.info("session expired", state=state.value)
        if stored is None or stored.state == state:  # else refused: written since the read
            self.took(state, stored)
        return stored

    def took(self, state: SessionState, stored: SessionMetadata | None) -> None:
        """The store holds ``state`` (``stored``: its record, None if unknown): this
        status's write of it, or a read after a write in doubt (stored_state.py)."""
        self.written_at = None if stored is None else stored.updated_at
        self.state = state
        self.owed = False
        self.idle_elsewhere = False

    async def park(self, elsewhere: bool = False) -> StorageError | None:
        """The last connection left: ``disconnected``, in the store too unless it fails.
        Then the session parks all the same, and the state is owed to the store
        (:meth:`save`): a store that is away must not leave it ``active`` for ever. The
        failure is returned, for the caller to tell as the outage's (a store that fails
        fails every disconnect: server/command_failures.py), else None.
        ``elsewhere``: connections of other processes sharing the store are still
        attached (presence says so). The session is not disconnected, so nothing is
        written; the state is owed, and written once they are gone (the last of them
        writes it when it leaves; this one's look, should their process have died)."""
        if elsewhere:
            self.state = SessionState.DISCONNECTED
            self.owed = True
            return None
        if self.state in (SessionState.ACTIVE, SessionState.IDLE):
            # Owed while the write is under way (become clears it once the store took
            # it): the presence heartbeat records the session as this process's
            # meanwhile, for a survivor to park should the process die before it lands
            # (server/presence.py refresh); a stop that cancels it owes it so too.
            self.owed = True
        try:
            stored = await self.become(SessionState.DISCONNECTED)
            if stored is not None:  # a state write is no activity: it expires as it would
                self.expires_at = stored.expires_at
        except (SessionNotFound, SessionClosed) as exc:
            # A deleted session is owed nothing, nor one closed elsewhere: it never
            # moves again (its notice ends it here, or the next attach reads it).
            log.info("the disconnected state not saved: the session has ended", error=str(exc))
            self.state = SessionState.DISCONNECTED
            self.owed = False
        except StorageError as exc:
            self.state = SessionState.DISCONNECTED
            self.owed = True  # saved at a look (control.py save_owed)
            return exc
        return None

    async def save(self) -> None:
        """Write the state the store is owed, if any; StorageError if it fails again."""
        if not self.owed:
            return
        with contextlib.suppress(SessionExpired, SessionNotFound, SessionClosed):
            await self._write(self.state)  # nothing left to save when these say so
        self.owed = False

    async def _write(
        self, state: SessionState, unless_updated_since: datetime | None = None
    ) -> SessionMetadata:
        """``state`` written to the store. This actor's state allowed the move, so a
        store that refuses it holds a state another process wrote since, closed or
        expired (its notice not here yet): that end, as the StorageError the actor's
        callers handle, not an InvalidTransition that fails the actor (and with it an
        attach, after its read deadline, and every peer attached, with 1011)."""
        try:
            return await self.storage.update_session_state(
                self.session_id,
                state,
                epoch=self.epoch,
                unless_updated_since=unless_updated_since,
            )
        except InvalidTransition:
            raise await self._ended_elsewhere() from None

    async def _ended_elsewhere(self) -> StorageError:
        metadata = await self.storage.get_metadata(self.session_id)
        name = repr(self.session_id)
        if metadata is None or (self.epoch is not None and metadata.epoch != self.epoch):
            return SessionNotFound(f"session {name} not found")
        if metadata.is_expired(self.storage.now()):
            return SessionExpired(f"session {name} has expired")
        return SessionClosed(f"session {name} was closed by another process")

    async def reclaim(self) -> None:
        """This process's connections are attached (registered again after the store
        lost them): a ``disconnected`` another process wrote, taking them for gone,
        becomes the state held here again. Anything else stored is left to the look,
        as is anything written after this read (another process's attach, say: an
        ``idle`` held here must not land over its ``active``)."""
        if self.state not in (SessionState.ACTIVE, SessionState.IDLE):
            return
        metadata = await self.storage.get_metadata(self.session_id)
        if metadata is None or (self.epoch is not None and metadata.epoch != self.epoch):
            return  # deleted or replaced: the notice, or the next look, ends it here
        if metadata.is_expired(self.storage.now()) or metadata.state != SessionState.DISCONNECTED:
            return
        held, self.state = self.state, SessionState.DISCONNECTED
        try:
            await self.become(held, unless_updated_since=metadata.updated_at)
        finally:
            self.state = held  # still attached here, whatever the store says

    async def gone_from_store(self, looks: OutageLog) -> bool:
        """A parked session's look at the store: whether the session it serves is no
        more there, as a live one: deleted (by cleanup once expired, by the API, or by
        another process on a shared store, whose notice only a subscription hears),
        replaced under its id, expired, or closed by another process. Nothing of it
        is then worth keeping in memory: an attach reads the store, and gets from it
        what it would get from this actor (4404, 4409). A read that fails says no: the
        next look reads again. ``looks`` (the process's) tells the log of an outage
        once, not at every parked session's every look (server/outage_log.py)."""
        try:
            metadata = await self.storage.get_metadata(self.session_id)
        except StorageError as exc:
            looks.failed("look", "reading the parked session failed", str(exc))
            # Not the expiry read before: past, it would bring the next look at once,
            # and a store that fails would be asked again twenty times a second.
            self.expires_at = None
            return False
        looks.worked("look")
        if metadata is None or (self.epoch is not None and metadata.epoch != self.epoch):
            self.owed = False
            return True
        self.expires_at = metadata.expires_at
        ended = (SessionState.EXPIRED, SessionState.CLOSED)
        if metadata.is_expired(self.storage.now()) or metadata.state in ended:
            self.owed = False  # an ended session is owed nothing
            return True
        return False

    def parked_look(self, look: float) -> float:
        """Seconds to a parked session's next look: ``look``, or just past the expiry
        the last look read, when that is sooner."""
        if self.expires_at is None:
            return look
        until = (self.expires_at - self.storage.now()).total_seconds()
        return min(look, max(until, 0.0) + PAST_EXPIRY)

    async def touch(self, *, refused_if_expired: bool = False) -> None:
        """Activity: the session's TTL starts again (not a closed one's: the store
        leaves a closed session's expiry as it closed). ``refused_if_expired`` (a
        peer's request, answered ``not_found``): SessionExpired is raised."""
        try:
            await self.storage.touch(self.session_id, epoch=self.epoch)
        except SessionExpired:
            if refused_if_expired:
                raise
        except SessionNotFound:
            pass

    async def check(self, quiet_for: float, idle_timeout: float, traffic: bool) -> str | None:
        """A timer's look at a connected session: ``traffic`` (peers sent frames since
        the last look, pings included, keepalive pings not) is activity, and its TTL
        starts again, as on every append; no frame for ``idle_timeout`` (``quiet_for``,
        here) makes it idle, unless the store recorded activity within it: on a shared
        store, peers attached to other processes publish (or send frames, recorded at
        their process's look) while this one's are silent. None while the session lives;
        else how it ended: :data:`EXPIRED`, :data:`CLOSED` (by another process), or
        :data:`DELETED` when the store holds no session of this epoch (deleted, or
        replaced under its id). Those two are another process's, whose notice is
        late, or was lost with the pub/sub connection. The actor looks between its
        appends (one command at a time), so an append of its own taken before the
        expiry has been stored, and renewed the session, or refused, by the time this
        reads it: no peer is closed 4404 for a session its last append renews."""
        if traffic:
            await self.touch()
        metadata = await self.storage.get_metadata(self.session_id)
        if metadata is None or (self.epoch is not None and metadata.epoch != self.epoch):
            return DELETED  # the session that took its id is not this one's to look at
        if metadata.is_expired(self.storage.now()):
            return EXPIRED
        if metadata.state == SessionState.CLOSED != self.state:
            return CLOSED  # by another process, its notice late or lost
        if self.state == SessionState.IDLE and metadata.state == SessionState.ACTIVE:
            # Another process's attach or append made it active, and may have written
            # nothing since (its connection left again: others are attached, here).
            # Held idle here, it was then never written idle again: the store said
            # active for as long as this one's peers stayed quiet. Taken as active,
            # it is written idle below once the store too has recorded no activity
            # for ``idle_timeout`` (appends elsewhere are activity).
            self.state = SessionState.ACTIVE
            self.idle_elsewhere = False
        if quiet_for >= idle_timeout:
            self.idle_elsewhere = False
            if self.state == SessionState.ACTIVE:
                await self._quiet(metadata, idle_timeout)
        elif self.state == SessionState.ACTIVE or self.idle_elsewhere:
            await self._spoken(metadata, traffic)
        return None

    async def _quiet(self, metadata: SessionMetadata, idle_timeout: float) -> None:
        """No frame here for ``idle_timeout``: idle, unless the store recorded activity
        within it, by its own clock (on a store only this process writes, all of it came
        through here: its quiet, on the monotonic clock, is the session's, and a step of
        the wall clock changes nothing). Already stored idle (by another process), it is
        taken as it is. The
        write is refused should the store have been written since this look read it
        (another process's attach or append between the two): the session stays active
        here, as that activity says, and the next look weighs it."""
        if metadata.state == SessionState.IDLE:
            self.state = SessionState.IDLE
            return
        if self.shared:
            elsewhere = (self.storage.now() - metadata.last_activity_at).total_seconds()
            if elsewhere < idle_timeout:
                return
        await self.become(SessionState.IDLE, unless_updated_since=metadata.updated_at)

    async def _spoken(self, metadata: SessionMetadata, traffic: bool) -> None:
        """This process's peers sent frames within ``idle_timeout``, and another process
        may have written the session idle (its own peers quiet for its idle_timeout,
        and no activity recorded within it), or disconnected (its last connection out,
        as this one's are attached, or taking them for gone). Active again over an
        idle only for activity its writer could not weigh: frames here since the last
        look (``traffic``: recorded by this look, not before), or activity the store
        recorded after the idle (store times against store times, not one process's
        clock against another's). Not for frames a look here recorded before: with a
        longer idle_timeout here than there, that rewrote active at every look, and
        the other process idle after each (r289: 119 state writes a minute)."""
        unweighed = traffic or _active_since_written(metadata)
        if metadata.state == SessionState.IDLE and not unweighed:
            self.state = SessionState.IDLE
            self.idle_elsewhere = True
            self.idle_written_at = metadata.updated_at
            return
        if metadata.state == SessionState.DISCONNECTED and self._idle_unmoved(metadata, unweighed):
            await self._idle_again(metadata)
            return
        if metadata.state in _PAUSED:
            # Its appends write nothing while it holds the session active, so without
            # this the store kept it so for as long. The state held here is active
            # should the write fail: the next look writes it again (taking the stored
            # state first, a failure left the actor holding ``disconnected`` with its
            # connections attached).
            self.state = SessionState.ACTIVE
            self.idle_elsewhere = False
            with contextlib.suppress(SessionExpired):  # the next look ends it
                await self._write(SessionState.ACTIVE)

    def _idle_unmoved(self, metadata: SessionMetadata, unweighed: bool) -> bool:
        """Held idle as another process wrote it, and nothing since that the idle did
        not weigh: no frame here, no activity stored after the idle (another process's
        agent appended, then left, and a park was written over both)."""
        if not self.idle_elsewhere or unweighed or self.idle_written_at is None:
            return False
        return metadata.last_activity_at <= self.idle_written_at

    async def _idle_again(self, metadata: SessionMetadata) -> None:
        """Held idle as another process wrote it, and since parked by one that took
        this one's connections for gone: idle again, as :meth:`reclaim` writes it, for
        nothing happened here that the idle did not weigh (active, before, for frames
        that idle had weighed). Not over a write since this look's read."""
        with contextlib.suppress(SessionExpired):  # the next look ends it
            await self._write(SessionState.IDLE, unless_updated_since=metadata.updated_at)


def _active_since_written(metadata: SessionMetadata) -> bool:
    """The store recorded activity since the session's record was last written
    otherwise (a state write sets ``updated_at`` alone; activity sets both to one
    time, from the store's own clock on Redis)."""
    return metadata.last_activity_at >= metadata.updated_at
