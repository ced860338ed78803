"""SqliteStorage: the storage contract in one SQLite file (``sqlite:///path/to/file.db``).

How it holds the contract's promises:

- Every write goes through the group-commit writer (``writer.py``): one connection, one
  thread, one transaction per batch, in submission order, so seqs follow call order and
  are gap-free. An append is acknowledged after its batch's COMMIT: with
  ``durability=fsync`` (the default, ``synchronous=FULL``) the WAL is synced by then;
  with ``durability=os`` (``synchronous=NORMAL``) it is written to the OS, which
  survives a crash of the process but not of the machine.
- Idempotency keys are looked up in an index of the log (``writes.py`` asks,
  ``batch.py`` holds the query), in the same transaction that appends: the window needs
  no memory and survives restarts.
- Reads run on their own read-only connections (``reads.py``) and never wait for the
  writer. Nothing is loaded at open: the file *is* the index.
- Live delivery (``live.py``): after a commit, the store publishes what it acknowledged
  to its :class:`~..feed.Feed`, and ends a session's subscriptions when it is closed or
  deleted.
- One process holds the file (``lock.py``). Its parts open in order and close in
  reverse (``opening.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

from bamboo_session.protocol.ids import check_session_id
from bamboo_session.protocol.models import (
    Message,
    MessageEvent,
    Session,
    SessionMetadata,
    SessionState,
    StoredEvent,
)
from bamboo_session.tasks import detached

from ..base import (
    Appended,
    AppendItem,
    AppendOne,
    HistoryPage,
    OwnerCaps,
    SessionFilter,
    SessionListResult,
    StorageError,
)
from ..clock import OnStoreClock, StoreClock
from ..close_once import CloseOnce
from ..feed import READ_BEHIND_BYTES, FeedSubscription
from ..importing import check_importable
from ..index import copy_metadata
from . import listing, parking, reads, writes
from .batch import Batch
from .checkpoint import Checkpointer
from .config import SYNCHRONOUS, SqliteStorageConfig
from .live import Live
from .lock import real_file, store_lock
from .opening import close_parts, open_parts
from .reads import Readers
from .recount import SqliteRecounter
from .schema import SCHEMA_VERSION, connect_writer, time_text
from .writer import Writer

log = logging.getLogger(__name__)

T = TypeVar("T")


class SqliteStorage(OnStoreClock, AppendOne):
    """Sessions, histories and event logs in one SQLite file. Open with ``await
    SqliteStorage.open(config)``; only one process may hold a file (StorageLocked)."""

    # StoreFormat: an open brings the file to this version, or refuses it.
    store_format = f"sqlite/{SCHEMA_VERSION}"
    appends_in_process = True  # AppendsInProcess: no network under an append

    def __init__(self, config: SqliteStorageConfig) -> None:
        self.config = config
        path = config.path
        self._clock = StoreClock()  # what its times are stamped with (persistence/clock.py)
        self._lock = store_lock(path)
        self._readers = Readers(path, config.readers)
        self._writer: Writer | None = None
        self._checkpointer: Checkpointer | None = None
        if not config.read_only:
            connect = functools.partial(connect_writer, path, SYNCHRONOUS[config.durability])
            self._writer = Writer(path, connect, self._clock)
            self._checkpointer = Checkpointer(path)
        self._live = Live()
        self._cleanup: asyncio.Task[None] | None = None
        self._ready = False
        self._closing = CloseOnce()

    @classmethod
    async def open(cls, config: SqliteStorageConfig) -> Self:
        storage = cls(config)
        await storage._open()
        return storage

    async def _open(self) -> None:
        parts = self._lock, self._readers, self._writer, self._checkpointer
        await open_parts(self.config, *parts, self._clock)
        if self._writer is not None and self.config.cleanup_interval is not None:
            self._cleanup = detached(self._cleanup_loop(), name="bamboo-sqlite-cleanup")
        self._ready = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def ready(self) -> bool:
        return self._ready

    def write_locations(self) -> tuple[Path, ...]:
        """Where SQLite writes its file, journal and WAL: the real file's directory."""
        return () if self.config.read_only else (real_file(self.config.path).parent,)

    async def probe_writes(self) -> None:  # WriteProbe: /readyz while appends fail
        """An empty transaction: the write lock taken as an append takes it (another
        process may hold it: lock_wait.py), after any fold of the WAL writes wait for."""
        await self._write(lambda batch: None)

    async def close(self) -> None:
        """Commit what is queued (or fail it at once, nothing of it stored, while another
        process holds the write lock: lock_wait.py), close the connections (the last
        one folds the WAL into the database file), release the lock. Safe to call
        twice: a call made while another closes returns once that close has ended
        (CloseOnce)."""
        await self._closing.run(self._close)

    async def _close(self) -> None:
        self._ready = False
        self._live.end_all()
        try:
            if self._cleanup is not None:
                self._cleanup.cancel()
                # Waited for without taking its CancelledError for ours: a caller
                # cancelled meanwhile is, and the lock is released all the same.
                await asyncio.wait([self._cleanup])
            await close_parts(self._readers, self._checkpointer, self._writer)
        finally:
            self._lock.release()

    # -- sessions -------------------------------------------------------------------

    async def create_session(
        self,
        session: Session,
        *,
        replace_expired: bool = False,
        made_now: bool = False,
        owner_caps: OwnerCaps | None = None,  # counted by its server (one process)
    ) -> None:
        session_id = check_session_id(session.metadata.id)
        meta = copy_metadata(session.metadata)
        meta.last_seq = meta.message_count = meta.stored_bytes = 0  # (a new log's)
        default_ttl = self.config.default_ttl
        if meta.ttl is None and default_ttl is not None:
            meta.ttl = default_ttl
            meta.expires_at = meta.last_activity_at + timedelta(seconds=default_ttl)
        self._clock.saw(meta.updated_at, meta.last_activity_at)  # the creator's times stay
        messages = writes.prepare([(MessageEvent(message), None) for message in session.messages])
        work = functools.partial(
            writes.create,
            meta=meta,
            messages=messages,
            max_sessions=self.config.max_sessions,
            replace_expired=replace_expired,
            made_now=made_now,
        )
        await self._write(work, functools.partial(self._live.created, session_id))

    async def load_session(self, session_id: str) -> Session | None:
        found = await self._read(reads.load_session, check_session_id(session_id), self.now())
        return None if found is None else Session(found[0], found[1])

    async def get_metadata(self, session_id: str) -> SessionMetadata | None:
        return await self._read(reads.metadata, check_session_id(session_id))

    async def delete_session(self, session_id: str) -> None:
        work = functools.partial(writes.delete, session_id=check_session_id(session_id))
        await self._write(work, lambda _: self._live.removed([session_id]))

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        sessions, total, examined = await self._read(listing.list_sessions, filter)
        offset, limit = max(filter.offset, 0), max(filter.limit, 0)
        return SessionListResult(sessions, total, offset, limit, examined)

    async def list_user_sessions(self, user_id: str) -> list[SessionMetadata]:
        return await self._read(listing.user_sessions, user_id)

    async def get_session_history(self, session_id: str) -> list[Message]:
        return await self._read(reads.history, check_session_id(session_id), self.now())

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        args = (check_session_id(session_id), limit, before, epoch, max_bytes, self.now())
        messages, start = await self._read(reads.history_page, *args)
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
        args = (check_session_id(session_id), start, limit, epoch, max_bytes, self.now())
        messages, start = await self._read(reads.history_from, *args)
        return HistoryPage(messages, start, start > 0)

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
        check_session_id(session_id)

        def after(meta: SessionMetadata) -> None:
            if meta.state == SessionState.CLOSED:
                self._live.closed(session_id)

        def work(batch: Batch) -> SessionMetadata:
            return writes.set_state(batch, session_id, state, epoch, unless_updated_since)

        return await self._write(work, after)

    async def touch(self, session_id: str, *, epoch: str | None = None) -> None:
        session_id = check_session_id(session_id)
        await self._write(functools.partial(writes.touch, session_id=session_id, epoch=epoch))

    def park_attached(self, since: datetime, batch: int) -> AsyncIterator[int]:
        """ParksAttached (persistence/sqlite/parking.py): a group commit per step."""
        return parking.steps(self._write, time_text(since), max(batch, 1))

    async def attached_left(self, since: datetime) -> bool:
        """ParksAttached: one read of the ``sessions_by_state`` index."""
        return await self._read(parking.attached_left, time_text(since), time_text(self.now()))

    async def cleanup_expired_sessions(self) -> int:
        # In steps, a write each: one write of all held every other write (a live
        # session's appends) for the whole round (bench/RESULTS.md, Mass expiry).
        removed, step = 0, functools.partial(writes.cleanup, limit=writes.CLEANUP_STEP)
        while len(ids := await self._write(step, self._live.removed)) == writes.CLEANUP_STEP:
            removed += len(ids)
        return removed + len(ids)

    # -- events ---------------------------------------------------------------------

    async def append_events(
        self, session_id: str, items: Sequence[AppendItem], *, epoch: str | None = None
    ) -> list[Appended]:
        check_session_id(session_id)
        prepared = writes.prepare(items)
        work = functools.partial(
            writes.append,
            session_id=session_id,
            items=prepared,
            epoch=epoch,
            cap=self.config.max_session_bytes,
            user_cap=self.config.max_user_bytes,
        )
        live = self._live
        results, _stored = await self._write(work, lambda done: live.published(session_id, done[1]))
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
        session_id = check_session_id(session_id)
        return await self._read(reads.events, session_id, after_seq, limit, max_bytes, epoch)

    async def subscribe(self, session_id: str, after_seq: int) -> FeedSubscription:
        check_session_id(session_id)
        position = functools.partial(self._read, reads.log_position, session_id)
        subscription: FeedSubscription | None = None

        async def read(after: int, limit: int) -> list[StoredEvent]:
            # Only the log it follows: a replace commits before its subscriptions end.
            epoch = None if subscription is None else subscription.epoch
            return await self.read_events(session_id, after, limit, READ_BEHIND_BYTES, epoch=epoch)

        subscription = await self._live.subscribe(session_id, after_seq, position, read)
        return subscription

    async def last_seq(self, session_id: str, *, epoch: str | None = None) -> int:
        return (await self._read(reads.log_position, check_session_id(session_id), epoch))[0]

    async def epoch(self, session_id: str) -> str:
        return (await self._read(reads.log_position, check_session_id(session_id)))[2]

    # -- import (SessionImport) -----------------------------------------------------

    async def import_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        check_session_id(session_id)
        check_importable(session_id, events)
        batch = list(events)
        self._clock.saw(*(event.ts for event in batch[-1:]))  # never back behind them
        work = functools.partial(writes.import_events, session_id=session_id, events=batch)
        await self._write(work, lambda _: self._live.published(session_id, batch))

    async def import_metadata(self, metadata: SessionMetadata) -> None:
        session_id = check_session_id(metadata.id)
        closes = metadata.state == SessionState.CLOSED

        def after(_: None) -> None:
            if closes:  # its subscriptions end, as at update_session_state's close
                self._live.closed(session_id)

        work = functools.partial(writes.import_metadata, meta=metadata)
        await self._write(work, after)
        self._clock.saw(metadata.updated_at, metadata.last_activity_at)

    # -- recount (StoredBytesRecount) -----------------------------------------------

    def bytes_recounter(self, *, dry_run: bool = False) -> SqliteRecounter:
        """What ``bamboo-session recount`` needs: persistence/sqlite/recount.py."""
        return SqliteRecounter(self._read, None if dry_run else self._write)

    # -- helpers --------------------------------------------------------------------

    async def _write(
        self, work: Callable[[Batch], T], after: Callable[[T], None] | None = None
    ) -> T:
        writer = self._writer
        if writer is None:
            raise StorageError(f"SQLite store {self.config.path} is open read-only")
        if not self._ready:
            raise StorageError(f"SQLite store {self.config.path} is not open")
        # A caller that leaves cancels only its wait: the write goes on in its batch.
        return await writer.submit(work, after)

    async def _read(self, query: Callable[..., T], *args: Any) -> T:
        if not self._ready:
            raise StorageError(f"SQLite store {self.config.path} is not open")
        return await self._readers.run(query, *args)

    async def _cleanup_loop(self) -> None:
        assert self.config.cleanup_interval is not None
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self.cleanup_expired_sessions()
            except Exception:
                log.exception("cleanup of expired sessions failed")
