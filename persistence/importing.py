"""What ``bamboo-session migrate`` needs of a store beyond the storage contract
(persistence/base.py): :class:`SessionImport`, taking in a session exactly as another
store holds it, and the check every backend's import makes of the events first
(:func:`check_importable`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import msgspec

from bamboo_session.protocol.models import SessionMetadata, StoredEvent

__all__ = ["SessionImport", "check_importable"]


@runtime_checkable
class SessionImport(Protocol):
    """A store that can take in a session exactly as another store holds it: what
    ``bamboo-session migrate`` needs beyond the contract. The session is created first
    with ``create_session`` (which keeps the given id, epoch, owner, title, ttl and
    creation time), then its events come in order, then its final metadata."""

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        """Appends ``events`` with their own seq, ts and key; the first must follow the
        session's last seq, and each the one before. Message events count as history.
        Raises SessionNotFound, and ValueError for a seq out of order or an event whose
        JSON does not decode (:func:`check_importable`); nothing is imported then."""
        ...

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        """Sets the session's state, ``updated_at``, ``last_activity_at``,
        ``expires_at``, ``ttl`` and ``extra`` as given, durably. Raises SessionNotFound."""
        ...


def check_importable(session_id: str, events: Sequence[StoredEvent]) -> None:
    """ValueError naming the first of ``events`` whose JSON does not decode as an
    AgentEvent (a damaged row of the source store), before an import stores any of
    them or takes any of their keys."""
    for event in events:
        try:
            event.event  # noqa: B018 - decoded here, and kept for the import to use
        except msgspec.DecodeError as exc:
            raise ValueError(f"import of {session_id!r}: seq {event.seq}: {exc}") from None
