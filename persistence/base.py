"""Storage interfaces (typing.Protocol), query types and typed errors shared by backends.

The methods follow the seed's ``SessionStorage`` trait, plus the event log that resume
is built on. Every backend honours the same contract:

- ``seq`` is assigned by the storage, from 1, gap-free per session, in call order, even
  when several tasks append to one session at once.
- An append returns once it is as durable as the configured mode says; what was
  returned is never lost and never reordered, across crashes and restarts.
- A ``message`` AgentEvent in the log *is* a history message: ``append_message`` writes
  one, and ``append_event`` with a ``MessageEvent`` counts as a message too. The history
  is rebuilt from the log, so a lost checkpoint loses nothing.
- Session ids are validated before any path or key is built from them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, Protocol, runtime_checkable

import msgspec

from bamboo_session.protocol.errors import InvalidSessionId, InvalidTransition
from bamboo_session.protocol.models import (
    AnyAgentEvent,
    Message,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

Durability = Literal["fsync", "os", "memory"]
DURABILITY_MODES: tuple[Durability, ...] = ("fsync", "os", "memory")

__all__ = [
    "DURABILITY_MODES",
    "Durability",
    "EventStorage",
    "InvalidSessionId",
    "InvalidTransition",
    "SessionClosed",
    "SessionExists",
    "SessionExpired",
    "SessionFilter",
    "SessionListResult",
    "SessionNotFound",
    "SessionStorage",
    "SortBy",
    "SortOrder",
    "Storage",
    "StorageError",
    "StorageFull",
    "StorageLocked",
]


class StorageError(Exception):
    """Storage failed (I/O error, disk full, corrupt file). Nothing was acknowledged."""


class SessionNotFound(StorageError):
    pass


class SessionExists(StorageError):
    pass


class SessionExpired(StorageError):
    pass


class SessionClosed(StorageError):
    """The session is closed: its history is readable, nothing more is appended."""


class StorageFull(StorageError):
    """``max_sessions`` is reached."""


class StorageLocked(StorageError):
    """Another process holds this storage's lock."""


class SortBy(enum.StrEnum):
    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    LAST_ACTIVITY_AT = "last_activity_at"
    MESSAGE_COUNT = "message_count"


class SortOrder(enum.StrEnum):
    ASC = "asc"
    DESC = "desc"


class SessionFilter(msgspec.Struct, kw_only=True):
    """A ``list_sessions`` query: every given field must match; times are inclusive
    lower bounds (``*_after``) and exclusive upper bounds (``created_before``)."""

    user_id: str | None = None
    state: SessionState | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    active_after: datetime | None = None
    title_contains: str | None = None
    limit: int = 100
    offset: int = 0
    sort_by: SortBy = SortBy.CREATED_AT
    sort_order: SortOrder = SortOrder.DESC


class SessionListResult(msgspec.Struct):
    sessions: list[SessionMetadata]
    total: int
    offset: int
    limit: int


@runtime_checkable
class EventStorage(Protocol):
    """The append-only event log of each session."""

    async def append_event(
        self, session_id: str, event: AnyAgentEvent, key: str | None = None
    ) -> StoredEvent:
        """Append one event; raises SessionNotFound, SessionClosed, StorageError."""
        ...

    async def append_events(
        self, session_id: str, items: Sequence[tuple[AnyAgentEvent, str | None]]
    ) -> list[StoredEvent]:
        """Append ``(event, key)`` pairs as one batch, in order, with consecutive seqs.
        All or nothing: on error none of them is in the log."""
        ...

    async def read_events(
        self, session_id: str, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """Events with ``seq > after_seq``, oldest first, at most ``limit``."""
        ...

    async def last_seq(self, session_id: str) -> int: ...

    async def epoch(self, session_id: str) -> str: ...


@runtime_checkable
class SessionStorage(EventStorage, Protocol):
    """Sessions, their history and their event logs (the seed's ``SessionStorage``)."""

    async def create_session(self, session: Session) -> None:
        """Raises SessionExists, StorageFull, InvalidSessionId."""
        ...

    async def load_session(self, session_id: str) -> Session | None:
        """Metadata and every acknowledged message; None if absent; SessionExpired."""
        ...

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        """The index's metadata, without reading messages; None if absent."""
        ...

    async def delete_session(self, session_id: str) -> None:
        """Removes the session and its log; raises SessionNotFound."""
        ...

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult: ...

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]: ...

    async def get_session_history(self, session_id: str) -> list[Message]:
        """Every acknowledged message, oldest first; raises SessionNotFound."""
        ...

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> StoredEvent:
        """Appends the message to the log as a ``message`` event (filling ``id`` and
        ``created_at`` where absent) and to the history."""
        ...

    async def update_session_state(
        self, session_id: str, state: SessionState, *, durable: bool = True
    ) -> SessionMetadata:
        """Moves the session to ``state`` (InvalidTransition if the table forbids it).
        ``durable=False`` returns before the change is on disk (it is written with the
        next checkpoint): for transient states a crash may lose, such as a server's own
        moves between active, idle and disconnected."""
        ...

    async def cleanup_expired_sessions(self) -> int:
        """Removes every session whose TTL has passed; returns how many."""
        ...

    async def checkpoint(self, session_id: str) -> None:
        """Writes the session's checkpoint now, if it is behind the log."""
        ...


@runtime_checkable
class Storage(SessionStorage, Protocol):
    """A storage backend with a lifecycle."""

    @property
    def ready(self) -> bool:
        """Open and accepting writes (``/readyz``)."""
        ...

    async def close(self) -> None:
        """Flushes pending appends, checkpoints every session, releases the lock."""
        ...
