"""SessionManager: live sessions in memory, their connections, parking and eviction.

The seed's ``SessionManager`` as a Python API, usable in-process without any socket;
the WebSocket layer is built on this same API. Each live session is a
:class:`SessionActor`, which the manager's :class:`ActorRegistry` spawns, evicts and
retires (server/actors.py). The manager also creates the session a ``hello`` asks
for (server/creations.py; server/handshake.py resolves which one), closes and
deletes sessions (server/endings.py); other processes' presence notices reach the actors through a
PresenceRelay (server/presence_relay.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Self

import structlog

from bamboo_session.persistence.base import (
    Appended,
    OwnerCaps,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    Storage,
)
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.event_envelope import EVENT_ENVELOPE_BYTES
from bamboo_session.protocol.frames import Welcome
from bamboo_session.protocol.ids import check_session_id, new_connection_id, new_session_id
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    Message,
    MessageEvent,
    Session,
    SessionMetadata,
    StoredEvent,
)

from .actor import SessionActor
from .actors import ActorRegistry
from .budget import MemoryBudget
from .commands import AccessRefusal, Detach, attach_refusal, in_process_batch
from .creations import Creations
from .endings import SessionEndings
from .failures import ServerBusy
from .manager_config import SessionManagerConfig
from .manager_stop import after_sessions, close_sessions
from .metrics import Metrics
from .outbox import Outbox
from .owed_states import OwedStates, owed_by
from .pages import PageReads
from .presence import LOCAL, overlay_live, shared_presence
from .presence_relay import PresenceRelay
from .quotas import Admission, check_fields
from .readiness import AppendHealth
from .receiver import Receiver
from .restart_park import RestartPark

log = structlog.get_logger("bamboo_session.manager")

__all__ = ["AppendResult", "Receiver", "ServerBusy", "SessionManager", "SessionManagerConfig"]


AppendResult = Appended  # the in-process API's name for what an append became


class SessionManager:
    """Sessions, live and stored, behind one API (the seed's ``SessionManager``)."""

    def __init__(
        self, config: SessionManagerConfig, storage: Storage, metrics: Metrics | None = None
    ) -> None:
        self.config = config
        self.storage = storage
        # What an appended event is held to, as a peer's publish (0: no frame limit).
        limit = config.max_frame_bytes
        self.max_event_json = max(1, limit - EVENT_ENVELOPE_BYTES) if limit else 0
        self.metrics = metrics or Metrics()
        # What live sessions and their connections hold, against config.memory_budget.
        self.budget = MemoryBudget(config.memory_budget)
        self.append_health = AppendHealth()  # what the actors' appends say of the store
        # Store reads a peer waits for (pages, replays, a session's load), each within
        # config.store_read_timeout, and how many pages are read at once (pages.py).
        self.page_reads = PageReads(config.read_slots, config.store_read_timeout)
        self.actors = ActorRegistry(config.max_sessions, self._load_actor, self.page_reads)
        self.creations = Creations(
            config,
            self.actors,
            self.create_session,
            self.stored_metadata,
            self.page_reads,
            storage.now,
        )
        self.endings = SessionEndings(self.actors, storage, self.page_reads)
        # Session-wide presence when the store is shared by several processes.
        relay = PresenceRelay(self.actors)  # other processes' notices, to the actors here
        self.shared_presence = shared_presence(storage, relay.announce, relay.registered_again)
        self.owed_states = OwedStates(storage, self.shared_presence, self.actors.get)
        self.append_health.owed_states = self.owed_states  # retiring actors hand theirs there
        self.owed_states.owed_by_actors = functools.partial(owed_by, self.actors)
        self.restart_park = RestartPark(storage, config.max_parked_at_stop)
        self.metrics.watch_actors(
            lambda: len(self.actors), self.actors.parked_count, lambda: self.budget.used
        )

    @classmethod
    async def new(cls, config: SessionManagerConfig, storage: Storage) -> SessionManager:
        """A started manager (the seed's ``SessionManager::new(config, storage)``)."""
        manager = cls(config, storage)
        manager.start()
        return manager

    def start(self) -> None:
        """Starts the shared store's presence heartbeat, the one background task."""
        if self.shared_presence is not None:
            self.shared_presence.start()

    async def park_left_attached(self) -> None:
        """On a store only this process holds, what a dead server left ``active`` or
        ``idle`` becomes ``disconnected`` (server/restart_park.py), before this returns
        or, past its first half second, in a task. ``serve``'s, not offline tools'."""
        if self.shared_presence is None:  # a shared store's presence sweep parks them
            await self.restart_park.begin()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- session lifecycle -------------------------------------------------------

    async def create_session(
        self,
        user_id: str | None = None,
        title: str | None = None,
        *,
        session_id: str | None = None,
        ttl: int | None = None,
        extra: dict[str, Any] | None = None,
        replace_expired: bool = False,
        owner_caps: OwnerCaps | None = None,
    ) -> Session:
        """A new session. Raises FieldTooLong when ``user_id``, ``title`` or ``extra``
        is over its limit (the index keeps them in memory), SessionExists; a delete of
        ``session_id`` under way is waited for first, as by ``get_session``.
        ``replace_expired``, ``owner_caps``: see ``Creations.admitted`` (the store's
        OwnerAtCap at a cap)."""
        check_fields(self.config, user_id, title, extra)
        if session_id:
            await self.actors.unheld(check_session_id(session_id))
        session = Session.new(
            session_id or new_session_id(), user_id, title, ttl, extra, self.storage.now()
        )
        with self.append_health.creating(session.id):  # /readyz: a failure of the store's
            await self.storage.create_session(
                session, replace_expired=replace_expired, made_now=True, owner_caps=owner_caps
            )
        stored = await self.storage.load_session(session.id)
        return stored or session

    async def get_session(self, session_id: str) -> Session | None:
        """The session as the store has it, None when it has none. A delete of it under
        way is waited for, within ``store_read_timeout`` (else StoreTimeout): meanwhile
        the store may not list a session it then brings back."""
        await self.actors.unheld(check_session_id(session_id))
        session = await self.storage.load_session(session_id)
        if session is not None:
            await self._overlay_live([session.metadata])
        return session

    async def get_or_create_session(
        self, session_id: str, user_id: str | None = None, title: str | None = None
    ) -> Session:
        await self.ensure_session(session_id, user_id, title)
        session = await self.get_session(session_id)
        if session is None:  # created and deleted in between: let the caller retry
            raise SessionNotFound(session_id)
        return session

    async def ensure_session(
        self,
        session_id: str,
        user_id: str | None = None,
        title: str | None = None,
        admit: Admission | None = None,
        *,
        deadline: float | None = None,
    ) -> SessionMetadata:
        """get-or-create without reading the history: what an attach with ``create``
        needs, so a reconnect storm does not load every session's messages. An expired
        session counts as missing: a new one replaces it. ``admit`` wraps a creation,
        and refuses it by raising; ``deadline`` bounds the reads, and the wait for a
        delete under way (server/creations.py, ``get_session``)."""

        def create(expired: SessionMetadata | None) -> Coroutine[Any, Any, Session]:
            return self.creations.admitted(
                admit, user_id, title, session_id=session_id, replacing=expired
            )

        await self.actors.unheld(check_session_id(session_id), deadline)
        return await self.creations.get_or_create(session_id, create, deadline)

    async def close_session(self, session_id: str) -> None:
        """Closes the session: its connections get ``closed`` and code 1000
        (server/endings.py). SessionNotFound if there is none, SessionExpired if its
        time to live has passed (live actor or not)."""
        await self.endings.close(session_id)

    async def stored_metadata(
        self, session_id: str, deadline: float | None = None
    ) -> SessionMetadata | None:
        """A hello's read of the session, by ``deadline`` (default: the read deadline
        from now); else StoreTimeout, 1011."""
        return await self.page_reads.lookup(lambda: self.storage.get_metadata(session_id), deadline)

    async def delete_session(self, session_id: str) -> None:
        """Removes the session: its connections get 4404 once the store deleted it, else
        1011 (they resume). StoreTimeout past ``store_read_timeout``; the session stays
        held off until the store's delete ends (server/endings.py)."""
        await self.endings.delete(session_id)

    # -- connections ---------------------------------------------------------------

    async def attach(
        self,
        session_id: str,
        outbox: Outbox,
        last_seq: int | None = None,
        epoch: str | None = None,
        *,
        deadline: float | None = None,
        access: AccessRefusal | None = None,
    ) -> tuple[SessionActor, Welcome]:
        """Attaches ``outbox`` to the session; the welcome (then any replay) is the
        first thing queued on it. Raises SessionNotFound, SessionClosed,
        SessionExpired, ServerBusy, what ``access`` refuses with; StoreTimeout when the
        store keeps the session from welcoming it by ``deadline`` (default: the read
        deadline from now; ActorRegistry.attach)."""
        return await self.actors.attach(session_id, outbox, last_seq, epoch, deadline, access)

    def detach(self, session_id: str, connection_id: str) -> None:
        if (actor := self.actors.get(session_id)) is not None:
            actor.post(Detach(connection_id))

    async def connect_session(
        self,
        session_id: str,
        connection_id: str | None = None,
        *,
        last_seq: int | None = None,
        epoch: str | None = None,
        role: str = "client",
    ) -> Receiver:
        """Attaches an in-process subscriber; its receiver yields the session's events."""
        # Not charged to the budget: an in-process subscriber reads at its own pace, and
        # may drop its receiver unread; its queue is bounded all the same.
        outbox = Outbox(
            connection_id or new_connection_id(),
            role,
            self.config.send_queue_frames,
            max_bytes=self.config.send_queue_bytes,
        )
        actor, _ = await self.attach(session_id, outbox, last_seq, epoch)
        return Receiver(outbox, actor.replay_reads, self.page_reads)

    async def reconnect_session(
        self,
        session_id: str,
        new_connection_id: str,
        last_seq: int | None = None,
        epoch: str | None = None,
    ) -> Receiver:
        """Attaches again, replaying what was missed after ``last_seq``."""
        return await self.connect_session(
            session_id, new_connection_id, last_seq=last_seq, epoch=epoch
        )

    async def disconnect_session(self, session_id: str, connection_id: str) -> None:
        self.detach(session_id, connection_id)

    # -- data and events ---------------------------------------------------------

    async def append_event(
        self, session_id: str, event: AnyAgentEvent, key: str | None = None
    ) -> Appended:
        (result,) = await self.append_events(session_id, [(event, key)])
        return result

    async def append_events(
        self, session_id: str, items: Sequence[tuple[AnyAgentEvent, str | None]]
    ) -> list[Appended]:
        """Appends ``(event, key)`` items together, in order, as a peer's ``batch`` frame
        does: stored whole or not at all; what each became. ValueError, with nothing
        stored, for a bad event (more than 16,384 free-form values in one included)
        or key, or more than ``inbox_limit`` items or ``inbox_bytes`` of weight (their
        JSON, and 128 bytes per free-form value). Waits, as a peer does, while the
        session's queue (or the memory budget) is full; for a delete under way or an old
        actor of the session finishing, no longer than ``store_read_timeout``
        (StoreTimeout, nothing stored). With ``max_frame_bytes`` in the config, an event
        that would reach a viewer in a frame over it is a ValueError too, as a peer's
        publish of it is ``too_large``: ``event cannot be stored: the event is N bytes
        in JSON, as JSON viewers get it: over the frame limit less the envelope of a
        frame of it (M)``. OutcomeUnknown (a StorageError; Redis only) when the store
        cannot say whether it stored them: a retry with the same keys tells."""
        config = self.config
        appends, acked = in_process_batch(
            items, config.inbox_limit, config.inbox_bytes, self.max_event_json
        )
        while True:
            actor = await self.actors.actor(session_id)  # SessionNotFound even for no items
            if not appends:
                return []
            if await actor.room_for(len(appends)):
                actor.post_batch(appends)
                return await acked
            # Its actor retired while this waited (parked, it may be evicted): the next takes it.

    async def add_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        # Checked as sent, as a peer's publish is: the store fills in what is absent
        # (its id and created_at), which the frame limit's envelope has room for.
        return await self.append_event(session_id, MessageEvent(message), key)

    async def list_sessions(self, filter: SessionFilter | None = None) -> SessionListResult:
        """What the store lists: a session mid-delete may be missing (back if the delete fails)."""
        result = await self.storage.list_sessions(filter or SessionFilter())
        await self._overlay_live(result.sessions)
        return result

    async def get_session_history(self, session_id: str) -> list[Message]:
        await self.actors.unheld(check_session_id(session_id))
        return await self.storage.get_session_history(session_id)

    async def read_events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        await self.actors.unheld(check_session_id(session_id))
        return await self.storage.read_events(session_id, after_seq, limit)

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        await self.actors.unheld(check_session_id(session_id))
        metadata = await self.storage.get_metadata(session_id)
        if metadata is not None:
            await self._overlay_live([metadata])
        return metadata

    def live_actor(self, session_id: str) -> SessionActor | None:
        return self.actors.get(session_id)

    # -- actors ------------------------------------------------------------------

    async def _load_actor(
        self, session_id: str, on_retired: Callable[[SessionActor], None]
    ) -> SessionActor:
        """An actor for a stored session: its metadata is all it reads."""
        storage = self.storage
        metadata = await storage.get_metadata(session_id)
        refusal = attach_refusal(metadata, session_id, storage.now())
        if refusal is not None or metadata is None:
            raise refusal or SessionNotFound(session_id)
        presence = self.shared_presence or LOCAL
        config, metrics, budget, health = self.config, self.metrics, self.budget, self.append_health
        return SessionActor(
            metadata, storage, config, metrics, on_retired, presence, budget, health
        )

    async def _overlay_live(self, found: list[SessionMetadata]) -> None:
        await overlay_live(found, self.shared_presence, self.actors.connections)

    # -- shutdown ----------------------------------------------------------------

    async def close(
        self,
        code: CloseCode = CloseCode.SERVICE_RESTART,
        reason: str = "server restarting",
        grace: float = 5.0,
    ) -> None:
        """Closes every connection with ``code`` after a ``closed`` frame, lets each
        actor flush and checkpoint, and cancels what is still running after ``grace``;
        then parks what the closes left attached (server/manager_stop.py)."""
        await close_sessions(self, code, reason, grace)
        await after_sessions(self)
