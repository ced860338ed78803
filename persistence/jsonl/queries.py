"""JsonlQueries: the read side of :class:`~.storage.JsonlStorage`, its base class.

It owns what the store keeps in memory of its sessions (their records, the index,
the live feed, the message cache) and answers every read of the storage contract
from them and the files: metadata, listings, histories, pages of events and live
subscriptions. :class:`~.storage.JsonlStorage` adds opening, closing and every write;
sessions come into them and go through its :class:`~.membership.Membership`.

Expired sessions (sliding TTL) refuse ``load_session`` and histories with
:class:`SessionExpired`; their metadata and events stay readable until cleanup.
"""

from __future__ import annotations

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import (
    Message,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)

from ..base import (
    HistoryPage,
    SessionExpired,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    StorageError,
)
from ..clock import OnStoreClock, StoreClock
from ..events import forward_bounds, page_bounds
from ..feed import CLOSED, READ_BEHIND_BYTES, Feed, FeedSubscription
from ..index import SessionIndex, copy_metadata
from .caches import MessageCache
from .config import JsonlStorageConfig
from .reads import HistoryReader, read_events
from .record import SessionRecord
from .tasks import FileJobs


class JsonlQueries(OnStoreClock):
    """Sessions as a JSONL store holds them in memory, and the reads served from them."""

    def __init__(self, config: JsonlStorageConfig) -> None:
        self.config = config
        self.layout = config.layout
        self._read_only = config.read_only
        self._index = SessionIndex(secondary=config.enable_index)
        self._records: dict[str, SessionRecord] = {}
        self._feed = Feed()
        self._messages = MessageCache(config.message_cache_bytes)
        # The store's threads for file work (reads, checkpoints, deletions): see tasks.py.
        self._jobs = FileJobs()
        self._history = HistoryReader(self.layout, self._messages, not config.read_only, self._jobs)
        self._clock = StoreClock()  # what its times are stamped with (persistence/clock.py)

    @property
    def read_only(self) -> bool:
        return self._read_only

    # -- sessions -------------------------------------------------------------------

    async def load_session(self, session_id: str) -> Session | None:
        record = self._records.get(check_session_id(session_id))
        if record is None:
            return None
        self._check_not_expired(record)
        try:
            messages = await self._read_history(record, 0, record.meta.message_count)
        except SessionNotFound:
            return None
        return Session(metadata=copy_metadata(record.meta), messages=messages)

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        record = self._records.get(check_session_id(session_id))
        return None if record is None else copy_metadata(record.meta)

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        result = self._index.query(filter)
        result.sessions = [copy_metadata(meta) for meta in result.sessions]
        return result

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]:
        return [copy_metadata(meta) for meta in self._index.of_user(user_id)]

    async def get_session_history(self, session_id: str) -> list[Message]:
        record = self._record(session_id)
        self._check_not_expired(record)
        return await self._read_history(record, 0, record.meta.message_count)

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        record = self._record(session_id, epoch)
        self._check_not_expired(record)
        start, end = page_bounds(record.meta.message_count, limit, before)
        messages = await self._read_history(record, start, end, max_bytes)
        if epoch is not None:
            self._record(session_id, epoch)  # replaced while reading: SessionNotFound
        start = end - len(messages)
        return HistoryPage(messages, start, start > 0)

    async def get_history_from(
        self,
        session_id: str,
        start: int,
        limit: int,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        record = self._record(session_id, epoch)
        self._check_not_expired(record)
        start, end = forward_bounds(record.meta.message_count, start, limit)
        messages = await self._read_history(record, start, end, max_bytes, oldest_first=True)
        if epoch is not None:
            self._record(session_id, epoch)  # replaced while reading: SessionNotFound
        return HistoryPage(messages, start, start > 0)

    async def _read_history(
        self,
        record: SessionRecord,
        start: int,
        end: int,
        max_bytes: int | None = None,
        oldest_first: bool = False,
    ) -> list[Message]:
        try:
            if oldest_first:
                return await self._history.read_forward(record, start, end, max_bytes)
            return await self._history.read(record, start, end, max_bytes)
        except StorageError:
            self._record(record.session_id)  # deleted while reading: SessionNotFound
            raise

    # -- events ---------------------------------------------------------------------

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
        *,
        epoch: str | None = None,
    ) -> list[StoredEvent]:
        record = self._record(session_id, epoch)
        try:
            events = await read_events(self._jobs, self.layout, record, after_seq, limit, max_bytes)
        except StorageError:
            self._record(session_id, epoch)  # deleted while reading: SessionNotFound
            raise
        if epoch is not None:
            self._record(session_id, epoch)  # replaced while reading: SessionNotFound
        return events

    async def subscribe(self, session_id: str, after_seq: int) -> FeedSubscription:
        record = self._record(session_id)

        async def read(after: int, limit: int) -> list[StoredEvent]:
            return await self.read_events(session_id, after, limit, READ_BEHIND_BYTES)

        subscription = self._feed.subscribe(session_id, after_seq, record.meta.last_seq, read)
        if record.meta.state == SessionState.CLOSED:
            subscription.end(CLOSED)
        return subscription

    async def last_seq(self, session_id: str, *, epoch: str | None = None) -> int:
        return self._record(session_id, epoch).meta.last_seq

    async def epoch(self, session_id: str) -> str:
        return self._record(session_id).meta.epoch

    # -- helpers --------------------------------------------------------------------

    def _record(self, session_id: str, epoch: str | None = None) -> SessionRecord:
        """The session's record; with ``epoch``, only if its log is of that epoch. An id
        of a bad form is told as such: one of a record is valid (checked at its
        creation, or in its files' names at the open), and is not matched again at
        every append (a regular expression: the memory store's way, bench/RESULTS.md)."""
        record = self._records.get(session_id) if isinstance(session_id, str) else None
        if record is None:
            check_session_id(session_id)
        if record is None or (epoch is not None and record.meta.epoch != epoch):
            raise SessionNotFound(f"session {session_id!r} not found")
        return record

    def _check_not_expired(self, record: SessionRecord) -> None:
        # The clock is read only for a session that can expire by time (one with a
        # TTL): every append checks, and most sessions have none.
        meta = record.meta
        if meta.is_expired(None if meta.expires_at is None else self._clock.now()):
            raise SessionExpired(f"session {record.meta.id!r} has expired")
