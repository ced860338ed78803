"""The memory store's log of a session, its side of ``SessionImport``
(``persistence/importing.py``, for ``migrate.py``: events appended with their own seq,
ts and key, and metadata set as given), and its sweeps of ``ParksAttached``
(persistence/parking.py) over its index. A base of :class:`~.memory.MemoryStorage`,
which sets what it uses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from bamboo_session.protocol.models import (
    NOT_MESSAGES,
    MessageEvent,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from .clock import StoreClock
from .events import UserBytes, stored_size
from .feed import CLOSED, Feed
from .importing import check_importable
from .index import SessionIndex
from .keys import KeyWindow
from .parking import attached_left_indexed, park_indexed


class SessionLog:
    """One session's events, and the seqs of its ``message`` events."""

    __slots__ = ("events", "keys", "message_seqs")

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.message_seqs: list[int] = []
        self.keys = KeyWindow()

    def add(self, events: Sequence[StoredEvent]) -> None:
        for event in events:
            self.events.append(event)
            if event.key is not None:
                self.keys.add(event.key, event.seq)
            if type(event.event) not in NOT_MESSAGES and isinstance(event.event, MessageEvent):
                self.message_seqs.append(event.seq)


class MemoryImports:
    """Imports into the memory store's logs and index, and the parking sweeps."""

    _clock: StoreClock
    _feed: Feed
    _index: SessionIndex
    _logs: dict[str, SessionLog]
    _users: UserBytes

    def _require_open(self) -> None:
        raise NotImplementedError  # the storage's

    def _meta(self, session_id: str, epoch: str | None = None) -> SessionMetadata:
        raise NotImplementedError  # the storage's

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        self._require_open()
        meta = self._meta(session_id)
        check_importable(session_id, events)
        log_ = self._logs[session_id]
        expected = meta.last_seq + 1
        for event in events:
            if event.seq != expected:
                raise ValueError(f"import of {session_id!r}: seq {event.seq}, not {expected}")
            expected += 1
        log_.add(events)
        if events:
            self._clock.saw(events[-1].ts)  # the store's clock never goes back behind them
            meta.last_seq = events[-1].seq
            meta.message_count = len(log_.message_seqs)
            adding = sum(stored_size(event.event_json, event.key) for event in events)
            meta.stored_bytes += adding
            self._users.add(meta.user_id, adding)
            log_.keys.forget_before(meta.last_seq)
            self._feed.publish(session_id, list(events))

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        self._require_open()
        meta = self._meta(metadata.id)
        self._index.set_state(meta.id, metadata.state)
        meta.updated_at = metadata.updated_at
        meta.last_activity_at = metadata.last_activity_at
        meta.expires_at = metadata.expires_at
        meta.ttl = metadata.ttl
        meta.extra = dict(metadata.extra)
        self._clock.saw(meta.updated_at, meta.last_activity_at)
        if metadata.state == SessionState.CLOSED:  # as a close does: its viewers are told
            self._feed.end(meta.id, CLOSED)

    def park_attached(self, since: datetime, batch: int) -> AsyncIterator[int]:
        self._require_open()
        return park_indexed(self._index, self._clock, since, batch)

    async def attached_left(self, since: datetime) -> bool:
        self._require_open()
        return attached_left_indexed(self._index, self._clock, since)
