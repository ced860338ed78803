"""The storage contract (typing.Protocol) every backend implements, its result types, and
(re-exported, so that the contract has one import path) the typed errors every backend
raises (persistence/errors.py), the ``list_sessions`` query (persistence/listing.py),
the live ``Subscription`` every ``subscribe`` returns (persistence/subscription.py) and
the small value types of its results (persistence/results.py).

The methods follow the seed's ``SessionStorage`` trait, plus the event log that resume
is built on. Every backend means them the same way, and one contract test suite
(``tests/test_storage_contract*.py``) holds each backend to it:

- ``seq`` is assigned by the store, from 1, gap-free per session, in call order, even
  when several tasks (or, on a shared store, several processes) append at once.
- An append returns once it is acknowledged: as durable as the backend is configured
  to make it. What was acknowledged is never lost and never reordered.
- Idempotency is the store's: an item whose key was accepted in this session within its
  last ``KEY_WINDOW`` appends is not appended again; the store answers with the first
  seq and ``duplicate=True``. The window survives restarts.
- Reads (``read_events``, histories, ``subscribe``) show acknowledged events only.
- A ``message`` AgentEvent in the log *is* a history message: ``append_message`` writes
  one, and so does ``append_events`` with a ``MessageEvent``. Its ``id`` and
  ``created_at`` are filled in where absent.
- Live delivery goes through the store: ``subscribe`` yields what is stored after a seq,
  then every new append, in order, with no gap and no duplicate, whichever process
  appended it.
- ``touch`` records activity (sliding TTL), except on a closed session, which has none:
  its expiry stays as it was when it closed. Checkpoints, write-ahead logs and
  durability modes are a backend's own business, not the contract's.
- Times are the store's: ``now()`` is the clock it stamps with and judges expiry by,
  and the one a caller compares stored times with (never its own: another machine's
  on a shared store). A store one process holds never stamps a time behind one it
  holds, whatever its wall clock does (persistence/clock.py).
- Session ids are validated before any path or key is built from them.
- An epoch fences a log: a session deleted and created again under its id, or an
  expired one replaced, has a new epoch, and an append or a read given the old one
  (``epoch=``) is SessionNotFound, as on a deleted session, checked in the same step
  as the append or the read. So a writer that has not yet heard of the change (an
  actor on another process of a shared store) never appends to, nor reads, the log of
  the session that took its session's place. ``update_session_state`` and ``touch``
  take it too, checked in the same step as the write: such a writer never closes,
  parks or revives the new session, nor moves its activity or expiry. So does
  ``last_seq``, so that the last seq a reply gives with a page is of the page's log.
- A store opened with ``max_session_bytes`` bounds what each session's log holds: an
  append whose fresh items would take the session's ``stored_bytes`` past it stores
  nothing and raises :class:`SessionFull`, atomically with the append (so it holds for
  several processes on a shared store); duplicates store nothing, and are answered as
  always. ``stored_bytes`` (in the metadata) survives restarts; each store counts it in
  its own measure, never less than the events' JSON (docs/protocol.md, "Stored bytes").
  A store whose stored counts can be wrong (sessions from a version before them, drift)
  counts them again with ``bamboo-session recount`` (persistence/recount.py).
- A store opened with ``max_user_bytes`` bounds the sum of ``stored_bytes`` over all
  the sessions of one ``user_id`` (closed and expired ones too, until they are deleted
  or cleaned up, which frees their bytes): an append past it stores nothing and raises
  :class:`UserFull` (a SessionFull), checked atomically with the append as the session
  cap is. Sessions without a user are not counted (no one owns them). What a session is
  created with and imports are counted but never refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Final, Protocol, runtime_checkable

from bamboo_session.protocol.errors import InvalidSessionId, InvalidTransition
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    Message,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from .errors import (
    AppendsSuspended,
    DeletedNotDurably,
    ListingChangedTooLarge,
    ListingTooLarge,
    OutcomeUnknown,
    OwnerAtCap,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFull,
    SessionLogFailed,
    SessionNotFound,
    SessionRefused,
    StorageError,
    StorageFull,
    StorageLocked,
    StoreMisconfigured,
    StoreTooNew,
    UserFull,
)
from .listing import ListPosition, SessionFilter, SessionListResult, SortBy, SortOrder
from .results import Appended, HistoryPage, OwnerCaps
from .subscription import Subscription

__all__ = [
    "KEY_WINDOW",
    "AppendItem",
    "AppendOne",
    "Appended",
    "AppendsSuspended",
    "DeletedNotDurably",
    "EventStorage",
    "HistoryPage",
    "InvalidSessionId",
    "InvalidTransition",
    "ListPosition",
    "ListingChangedTooLarge",
    "ListingTooLarge",
    "OutcomeUnknown",
    "OwnerAtCap",
    "OwnerCaps",
    "SessionClosed",
    "SessionExists",
    "SessionExpired",
    "SessionFilter",
    "SessionFull",
    "SessionListResult",
    "SessionLogFailed",
    "SessionNotFound",
    "SessionRefused",
    "SessionStorage",
    "SortBy",
    "SortOrder",
    "Storage",
    "StorageError",
    "StorageFull",
    "StorageLocked",
    "StoreMisconfigured",
    "StoreTooNew",
    "Subscription",
    "UserFull",
]

KEY_WINDOW: Final = 10_000  # appends within which an idempotency key is remembered

AppendItem = tuple[AnyAgentEvent, str | None]  # an event and its idempotency key


@runtime_checkable
class EventStorage(Protocol):
    """The append-only event log of each session."""

    async def append_events(
        self, session_id: str, items: Sequence[AppendItem], *, epoch: str | None = None
    ) -> list[Appended]:
        """Append ``(event, key)`` items as one batch, in order: each fresh item gets the
        next seq, each duplicate (see the module docstring) gets its first seq. The
        batch is stored whole or not at all. A StorageError means not at all, but for
        OutcomeUnknown, which only a networked store raises: the reply may be lost
        after the store took the batch (or it took it short of the durability asked),
        so it means "maybe": retry with the same keys, and the retry gets the first
        seqs as duplicates if it was stored. With ``epoch``, only to the log of that epoch:
        the session's is another (it was deleted and created again, or replaced), and
        the batch is SessionNotFound, nothing of it stored, checked atomically with the
        append. Past the store's ``max_session_bytes``, the batch is SessionFull, and
        past its ``max_user_bytes`` UserFull, nothing of it stored, checked atomically
        with the append too. A store may refuse a session's appends until it is opened
        again (AppendsSuspended, nothing stored: the JSONL store after a delete it undid).
        A failure of the session's own file, not of the store, is SessionLogFailed (the
        JSONL store's log at the file size limit, one it may not write). Raises
        SessionNotFound, SessionExpired, SessionClosed, SessionFull, AppendsSuspended,
        SessionLogFailed, OutcomeUnknown, StorageError."""
        ...

    async def append_event(
        self, session_id: str, event: AnyAgentEvent, key: str | None = None
    ) -> Appended:
        """``append_events`` for one item."""
        ...

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
        *,
        epoch: str | None = None,
    ) -> list[StoredEvent]:
        """Acknowledged events with ``seq > after_seq``, oldest first: at most ``limit``,
        and no more than ``max_bytes`` of encoded events (but always the first one, if
        there is one). With ``epoch``, only from the log of that epoch (else
        SessionNotFound, as at ``append_events``). Raises SessionNotFound."""
        ...

    async def subscribe(self, session_id: str, after_seq: int) -> Subscription:
        """Follow the session's log after ``after_seq`` (see :class:`Subscription`).
        Raises SessionNotFound."""
        ...

    async def last_seq(self, session_id: str, *, epoch: str | None = None) -> int:
        """The last acknowledged seq (0 for an empty log); raises SessionNotFound. With
        ``epoch``, only of the log of that epoch (else SessionNotFound, as at
        ``read_events``): a page and the last seq read with the same epoch are of one
        log, whatever replaced the session between the two reads."""
        ...

    async def epoch(self, session_id: str) -> str:
        """The log's epoch; raises SessionNotFound."""
        ...


class AppendOne:
    """``append_event``, an ``append_events`` of one item: for a backend to inherit."""

    __slots__ = ()

    async def append_event(
        self: EventStorage, session_id: str, event: AnyAgentEvent, key: str | None = None
    ) -> Appended:
        return (await self.append_events(session_id, [(event, key)]))[0]


@runtime_checkable
class SessionStorage(EventStorage, Protocol):
    """Sessions, their history and their event logs (the seed's ``SessionStorage``)."""

    async def create_session(
        self,
        session: Session,
        *,
        replace_expired: bool = False,
        made_now: bool = False,
        owner_caps: OwnerCaps | None = None,
    ) -> None:
        """Stores a new session (its messages, if any, become its first log events).
        With ``made_now`` (a session made at ``now()``, as the server makes its own), it
        is active at the instant the store makes it (``clock.made_at``): its TTL runs
        from there, not from before the store's work; else its times stay as given.
        With ``replace_expired``, a session of the same id that has expired (by the
        store's clock: ``expires_at`` passed, or state ``expired``) counts as missing:
        it goes, with its log, history, keys and index entries, and the new one takes
        its place in one atomic step (for every process of a shared store, and across
        a crash: the old expired session or the new one, never the new metadata with
        an old event). Its subscriptions end with ``"deleted"``. Of two such creates
        of one id, one replaces it and the other gets SessionExists. ``owner_caps``:
        a store several processes write (Redis; ``counts_owner_caps`` true) refuses
        the creation with OwnerAtCap when the session's user keeps that many sessions,
        counted in the same atomic step, so that two processes creating at once never
        both take the last place; a store one process holds ignores them (its server
        counts and creates one at a time per user). Raises SessionExists,
        StorageFull, OwnerAtCap, InvalidSessionId."""
        ...

    async def load_session(self, session_id: str) -> Session | None:
        """Metadata and every acknowledged message; None if absent; SessionExpired."""
        ...

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        """The session's metadata, without reading messages; None if absent."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Removes the session and its log; raises SessionNotFound. Its subscriptions
        end with ``"deleted"``. A store may refuse deletes until it is opened again
        (AppendsSuspended, the session left whole: the JSONL store past
        ``wal_kept_max_bytes`` after a failed sync). DeletedNotDurably: the delete took
        effect (the session is gone for every reader), but not durably until the next
        open (the JSONL store without its WAL, its directory's sync failed)."""
        ...

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult: ...

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]: ...

    async def get_session_history(self, session_id: str) -> list[Message]:
        """Every acknowledged message, oldest first; raises SessionNotFound,
        SessionExpired."""
        ...

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        """The newest ``limit`` messages before index ``before`` (default: the end),
        oldest first. Reads about ``limit`` messages, however long the history. With
        ``max_bytes``, only the newest of those whose stored sizes (each its
        ``message`` event's JSON, as ``StoredEvent.size``, or about it) sum to at most
        ``max_bytes``, but always the newest one: the read stops at the first message
        past the budget, so a page of large messages reads about its bytes, not its
        count (``start`` and ``has_more`` say where the page begins). With ``epoch``,
        only from the log of that epoch (else SessionNotFound, as at
        ``append_events``). Raises SessionNotFound, SessionExpired."""
        ...

    async def get_history_from(
        self,
        session_id: str,
        start: int,
        limit: int,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        """``get_history_page`` forwards: the oldest ``limit`` messages from index
        ``start`` on (none from the end on), oldest first. With ``max_bytes``, only the
        oldest of those whose stored sizes (counted as ``get_history_page`` counts
        them) sum to at most ``max_bytes``, but always the first one: the read stops at
        the first message past the budget. ``start`` is where the page begins (at most
        the message count), ``has_more`` as in any page. With ``epoch``, only from the
        log of that epoch. Raises SessionNotFound, SessionExpired."""
        ...

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        """Appends the message to the log as a ``message`` event, which adds it to the
        history."""
        ...

    async def update_session_state(
        self,
        session_id: str,
        state: SessionState,
        *,
        epoch: str | None = None,
        unless_updated_since: datetime | None = None,
    ) -> SessionMetadata:
        """Moves the session to ``state`` (InvalidTransition if the state table forbids
        it). A move to ``closed`` is durable when this returns, and ends the session's
        subscriptions with ``"closed"``; a backend may write moves among the live states
        (active, idle, disconnected) lazily, since they describe connections, which a
        crash ends anyway. With ``epoch``, only the session of that epoch: one of
        another (deleted and created again, or replaced) is SessionNotFound and left as
        it is, checked atomically with the move and before anything else. With
        ``unless_updated_since`` (the ``updated_at`` the caller read), one written
        since (activity, a state) is left as it is, checked atomically with the move
        after all else: the state returned tells. Raises SessionNotFound, SessionExpired."""
        ...

    async def touch(self, session_id: str, *, epoch: str | None = None) -> None:
        """Records activity now: ``last_activity_at``, and ``expires_at`` slides with it.
        A closed session has no activity: it is left exactly as it closed, without an
        error, so that a touch that raced with its close (another task, or another
        process of a shared store) does not put off its expiry; its TTL runs from its
        last activity before the close. With ``epoch``, only the session of that epoch
        (else SessionNotFound, nothing touched, as at ``update_session_state``). Raises
        SessionNotFound, SessionExpired (activity does not revive a session; a closed
        one that expired included)."""
        ...

    async def cleanup_expired_sessions(self) -> int:
        """Removes every session whose TTL has passed; returns how many."""
        ...

    def now(self) -> datetime:
        """The store's clock now: what it stamps ``updated_at``, ``last_activity_at``,
        ``expires_at`` and events' ``ts`` with, and judges expiry by (``is_expired``
        of a session read from it is ``metadata.is_expired(storage.now())``)."""
        ...

    def seconds_since(self, moment: datetime) -> float:
        """Seconds from ``moment``, a time this store stamped (an event's ``ts``), to
        now on its clock (``now() - moment``), 0 at the least: the server's delivery
        lag, once per fan-out. A store whose clock is this process's may time it from a
        stamp it just gave by the monotonic clock (persistence/clock.py)."""
        ...


@runtime_checkable
class Storage(SessionStorage, Protocol):
    """A storage backend with a lifecycle."""

    @property
    def ready(self) -> bool:
        """Open and accepting appends (``/readyz``)."""
        ...

    async def close(self) -> None:
        """Finishes pending appends, releases what the backend holds; ends every
        subscription. Safe to call twice: a call made while another is closing returns
        once that close has ended (persistence/close_once.py)."""
        ...
