"""MemoryStorage: the storage contract held in this process's memory, for tests and for
embedding. Nothing survives the process; everything else behaves as on the durable
backends (``memory://``). Imports, and each session's log, are in memory_imports.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Final, Self

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import (
    Message,
    MessageEvent,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)
from bamboo_session.tasks import cancel_and_wait, detached

from .base import (
    Appended,
    AppendItem,
    AppendOne,
    HistoryPage,
    OwnerCaps,
    SessionClosed,
    SessionExists,
    SessionExpired,
    SessionFilter,
    SessionListResult,
    SessionNotFound,
    StorageError,
    StorageFull,
)
from .clock import OnStoreClock, StoreClock, made_at
from .events import (
    UserBytes,
    check_room,
    check_user_room,
    completed_event,
    count_within,
    forward_bounds,
    page_bounds,
    stored_size,
    within_bytes,
)
from .feed import CLOSED, DELETED, READ_BEHIND_BYTES, Feed, FeedSubscription
from .index import SessionIndex, copy_metadata
from .keys import split_duplicates
from .memory_imports import MemoryImports, SessionLog
from .state_condition import check_condition, updated_since
from .url import StoreOptions, StoreURL

log = logging.getLogger(__name__)

# Read once: a member read off its class goes through EnumType.__getattr__ on Python
# 3.11 (about 850 machine instructions), and every append asks.
_CLOSED: Final = SessionState.CLOSED


class MemoryStorage(OnStoreClock, MemoryImports, AppendOne):
    """Sessions and their logs in dictionaries. ``async with MemoryStorage() as s``, or
    ``await MemoryStorage.open()``."""

    appends_in_process = True  # AppendsInProcess: no network under an append

    def __init__(
        self,
        default_ttl: int | None = None,
        max_sessions: int | None = None,
        cleanup_interval: float | None = None,
        max_session_bytes: int | None = None,
        max_user_bytes: int | None = None,
    ) -> None:
        self.default_ttl = default_ttl
        self.max_sessions = max_sessions
        self.max_session_bytes = max_session_bytes
        self.max_user_bytes = max_user_bytes
        self._users = UserBytes()  # what each user's sessions hold
        self._cleanup_interval = cleanup_interval
        self._index = SessionIndex()
        self._logs: dict[str, SessionLog] = {}
        self._feed = Feed()
        self._cleanup: asyncio.Task[None] | None = None
        self._open = True
        self._clock = StoreClock()  # what its times are stamped with (persistence/clock.py)

    @classmethod
    async def open(
        cls,
        default_ttl: int | None = None,
        max_sessions: int | None = None,
        cleanup_interval: float | None = None,
        max_session_bytes: int | None = None,
        max_user_bytes: int | None = None,
    ) -> Self:
        storage = cls(
            default_ttl, max_sessions, cleanup_interval, max_session_bytes, max_user_bytes
        )
        if cleanup_interval is not None:
            storage._cleanup = detached(storage._cleanup_loop(), "bamboo-memory-cleanup")
        return storage

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        return self._open

    async def close(self) -> None:
        self._open = False
        if self._cleanup is not None:
            await cancel_and_wait(self._cleanup)
        self._feed.end_all()

    # -- sessions -------------------------------------------------------------------

    async def create_session(
        self,
        session: Session,
        *,
        replace_expired: bool = False,
        made_now: bool = False,
        owner_caps: OwnerCaps | None = None,  # counted by its server (one process)
    ) -> None:
        self._require_open()
        session_id = check_session_id(session.metadata.id)
        existing = self._index.get(session_id)
        if existing is not None:
            if not (replace_expired and existing.is_expired(self.now())):
                raise SessionExists(f"session {session_id!r} already exists")
            self._remove(session_id)  # its place goes to the new one, with no await between
        elif self.max_sessions is not None and len(self._index) >= self.max_sessions:
            raise StorageFull(f"the storage holds its maximum of {self.max_sessions} sessions")
        meta = copy_metadata(session.metadata)
        meta.last_seq = 0
        meta.message_count = 0
        meta.stored_bytes = 0
        if meta.ttl is None and self.default_ttl is not None:
            meta.ttl = self.default_ttl
            meta.expires_at = meta.last_activity_at + timedelta(seconds=meta.ttl)
        if made_now:  # (made with no await since: in place for uniformity's sake)
            made_at(meta, self._clock.now())
        self._clock.saw(meta.updated_at, meta.last_activity_at)  # the creator's times stay
        self._index.add(meta)
        self._logs[session_id] = SessionLog()
        if session.messages:  # what the session is made with: not held to the cap
            items = [(MessageEvent(message), None) for message in session.messages]
            self._append(meta, self._logs[session_id], items, capped=False)

    async def load_session(self, session_id: str) -> Session | None:
        meta = self._index.get(check_session_id(session_id))
        if meta is None:
            return None
        self._check_not_expired(meta)
        return Session(copy_metadata(meta), self._messages(session_id, 0, meta.message_count))

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        meta = self._index.get(check_session_id(session_id))
        return None if meta is None else copy_metadata(meta)

    async def delete_session(self, session_id: str) -> None:
        self._require_open()
        self._meta(session_id)
        self._remove(session_id)

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        result = self._index.query(filter)
        result.sessions = [copy_metadata(meta) for meta in result.sessions]
        return result

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]:
        return [copy_metadata(meta) for meta in self._index.of_user(user_id)]

    async def get_session_history(self, session_id: str) -> list[Message]:
        meta = self._meta(session_id)
        self._check_not_expired(meta)
        return self._messages(session_id, 0, meta.message_count)

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        meta = self._meta(session_id, epoch)
        self._check_not_expired(meta)
        start, end = page_bounds(meta.message_count, limit, before)
        log_ = self._logs[session_id]
        newest = reversed(log_.message_seqs[start:end])
        start = end - count_within((log_.events[seq - 1].size for seq in newest), max_bytes)
        return HistoryPage(self._messages(session_id, start, end), start, start > 0)

    async def get_history_from(
        self,
        session_id: str,
        start: int,
        limit: int,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        meta = self._meta(session_id, epoch)
        self._check_not_expired(meta)
        start, end = forward_bounds(meta.message_count, start, limit)
        log_ = self._logs[session_id]
        oldest = log_.message_seqs[start:end]
        end = start + count_within((log_.events[seq - 1].size for seq in oldest), max_bytes)
        return HistoryPage(self._messages(session_id, start, end), start, start > 0)

    async def append_message(
        self, session_id: str, message: Message, key: str | None = None
    ) -> Appended:
        return await self.append_event(session_id, MessageEvent(message), key)

    async def update_session_state(
        self,
        session_id: str,
        state: SessionState,
        *,
        epoch: str | None = None,
        unless_updated_since: datetime | None = None,
    ) -> SessionMetadata:
        self._require_open()
        check_condition(state, unless_updated_since)
        meta = self._meta(session_id, epoch)
        meta.state.check_transition(state)
        if state != SessionState.EXPIRED:
            self._check_not_expired(meta)  # a state change does not revive a session
        if updated_since(meta.updated_at, unless_updated_since):
            return copy_metadata(meta)  # written since its caller read it: left as it is
        self._index.set_state(session_id, state)
        meta.updated_at = self._clock.stamp()
        if state == SessionState.CLOSED:
            self._feed.end(session_id, CLOSED)
        return copy_metadata(meta)

    async def touch(self, session_id: str, *, epoch: str | None = None) -> None:
        self._require_open()
        meta = self._meta(session_id, epoch)
        self._check_not_expired(meta)
        if meta.state != SessionState.CLOSED:  # a closed session has no activity
            meta.touch(self._clock.stamp())

    async def cleanup_expired_sessions(self) -> int:
        self._require_open()
        now = self._clock.now()
        expired = [meta.id for meta in self._index if meta.is_expired(now)]
        for session_id in expired:
            self._remove(session_id)
        return len(expired)

    # -- events ---------------------------------------------------------------------

    async def append_events(
        self, session_id: str, items: Sequence[AppendItem], *, epoch: str | None = None
    ) -> list[Appended]:
        self._require_open()
        meta = self._meta(session_id, epoch)
        if meta.state == _CLOSED:
            raise SessionClosed(f"session {session_id!r} is closed")
        self._check_not_expired(meta)
        return self._append(meta, self._logs[session_id], items)

    def _append(
        self,
        meta: SessionMetadata,
        log_: SessionLog,
        items: Sequence[AppendItem],
        capped: bool = True,
    ) -> list[Appended]:
        fresh, results = split_duplicates(items, meta.last_seq, log_.keys)
        if not fresh:
            return results
        now = self._clock.stamp()
        if len(fresh) == 1:  # most appends: one event (no comprehension's or generator's frame)
            seq, event, key = fresh[0]
            stored = [StoredEvent(seq, now, completed_event(event), key)]
            adding = stored_size(stored[0].event_json, key)
        else:
            stored = [
                StoredEvent(seq, now, completed_event(event), key) for seq, event, key in fresh
            ]
            adding = sum(stored_size(event.event_json, event.key) for event in stored)
        if capped:
            check_room(meta.stored_bytes, adding, self.max_session_bytes)
            user = meta.user_id
            check_user_room(user, self._users.of(user), adding, self.max_user_bytes)
        meta.stored_bytes += adding
        self._users.add(meta.user_id, adding)
        log_.add(stored)
        meta.last_seq = stored[-1].seq
        meta.message_count = len(log_.message_seqs)
        log_.keys.forget_before(meta.last_seq)
        meta.touch(now)
        self._feed.publish(meta.id, stored)
        return results

    async def read_events(
        self,
        session_id: str,
        after_seq: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
        *,
        epoch: str | None = None,
    ) -> list[StoredEvent]:
        self._meta(session_id, epoch)
        events = self._logs[session_id].events
        end = len(events) if limit is None else min(len(events), after_seq + max(limit, 0))
        page = events[max(after_seq, 0) : end]
        return page if max_bytes is None else within_bytes(page, max_bytes)

    async def subscribe(self, session_id: str, after_seq: int) -> FeedSubscription:
        meta = self._meta(session_id)

        async def read(after: int, limit: int) -> list[StoredEvent]:
            return await self.read_events(session_id, after, limit, READ_BEHIND_BYTES)

        subscription = self._feed.subscribe(session_id, after_seq, meta.last_seq, read)
        if meta.state == SessionState.CLOSED:
            subscription.end(CLOSED)
        return subscription

    async def last_seq(self, session_id: str, *, epoch: str | None = None) -> int:
        return self._meta(session_id, epoch).last_seq

    async def epoch(self, session_id: str) -> str:
        return self._meta(session_id).epoch

    # -- helpers --------------------------------------------------------------------

    def _messages(self, session_id: str, start: int, end: int) -> list[Message]:
        log_ = self._logs[session_id]
        messages = []
        for seq in log_.message_seqs[start:end]:
            event = log_.events[seq - 1].event
            assert isinstance(event, MessageEvent)
            messages.append(event.message)
        return messages

    def _remove(self, session_id: str) -> None:
        meta = self._index.remove(session_id)
        if meta is not None:  # its bytes are the user's no more
            self._users.add(meta.user_id, -meta.stored_bytes)
        del self._logs[session_id]
        self._feed.end(session_id, DELETED)

    def _meta(self, session_id: str, epoch: str | None = None) -> SessionMetadata:
        """The session's metadata; with ``epoch``, only if its log is of that epoch."""
        meta = self._index.get(session_id) if isinstance(session_id, str) else None
        if meta is None:  # a bad id told as such; those in the index were checked (at creation)
            check_session_id(session_id)
        if meta is None or (epoch is not None and meta.epoch != epoch):
            raise SessionNotFound(f"session {session_id!r} not found")
        return meta

    def _check_not_expired(self, meta: SessionMetadata) -> None:
        # The clock is read only for a session that can expire by time (one with a
        # TTL): every append checks, and most sessions have none.
        now = None if meta.expires_at is None else self._clock.now()
        if meta.is_expired(now):
            raise SessionExpired(f"session {meta.id!r} has expired")

    def _require_open(self) -> None:
        if not self._open:
            raise StorageError("storage is closed")

    async def _cleanup_loop(self) -> None:
        assert self._cleanup_interval is not None
        while True:
            await asyncio.sleep(self._cleanup_interval)
            removed = await self.cleanup_expired_sessions()
            if removed:
                log.info("removed %d expired sessions", removed)


async def open_from_url(url: StoreURL, options: StoreOptions) -> MemoryStorage:
    """``memory://``: a new, empty store (there is nothing to read only)."""
    url.check_params(set())
    return await MemoryStorage.open(
        options.default_ttl,
        options.max_sessions,
        options.cleanup_interval,
        options.max_session_bytes,
        options.max_user_bytes,
    )
