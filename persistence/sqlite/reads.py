"""The SQLite store's read side: a pool of read-only connections on their own threads,
and the queries the contract's reads need.

In WAL mode a reader sees the last commit made before its read began and never waits
for the writer, so reads run beside the group commit. A read that takes several
statements runs them in one read transaction (one snapshot). Every query here is served
by an index: a session by its id, a page of its log by ``(session_id, seq)``, a page of
its history by ``(session_id, message_index)``; a listing, by the index of its filter, is
listing.py's.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import traceback
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from bamboo_session.protocol.models import Message, SessionMetadata, StoredEvent

from ..base import SessionExpired, SessionNotFound, StorageError
from ..events import forward_bounds, page_bounds
from ..threads import ThreadJobs
from .lock_wait import CLOSE_WAIT
from .schema import (
    EVENT_COLUMNS,
    SESSION_COLUMNS,
    SessionRow,
    connect_reader,
    event_of,
    metadata_of,
)

T = TypeVar("T")


class _MessageEnvelope(msgspec.Struct):
    """A ``message`` event's JSON, decoded for its message only."""

    message: Message


_message_decoder = msgspec.json.Decoder(_MessageEnvelope)


class Readers:
    """``threads`` read-only connections, each used by one read at a time, on as many
    threads. A read holds its thread from before it is handed over until its query has
    ended there, even when its caller gave up on it (persistence/threads.py): reads of
    a file another process keeps locked wait for a thread, and are never queued
    uncounted behind those that wait for the lock.

    The close waits ``CLOSE_WAIT`` seconds at most for the reads under way: one whose
    read lock another process holds waits inside SQLite for some 10 s, and nothing ends
    that sooner (lock_wait.py). It is left to end in its thread, which then closes its
    connection itself: it writes nothing, and its caller is gone."""

    def __init__(self, path: Path, threads: int) -> None:
        self._path = path
        self._threads = threads
        self._jobs: ThreadJobs | None = None
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        # Taken to hand a connection back, and by the close: one left busy by the close
        # is closed by its thread, never put back.
        self._handover = threading.Lock()
        self._closed = False

    async def start(self) -> None:
        self._jobs = ThreadJobs(self._threads, "bamboo-sqlite-read")
        for _ in range(self._threads):
            self._give_back(await self._jobs.run(connect_reader, self._path))

    async def run(self, query: Callable[..., T], *args: Any) -> T:
        """``query(connection, *args)`` on a reader thread; an SQLite error becomes a
        StorageError."""
        if self._jobs is None:
            raise StorageError(f"SQLite store at {self._path} is not open")
        return await self._jobs.run(self._call, query, args)

    def _call(self, query: Callable[..., T], args: tuple[Any, ...]) -> T:
        connection = self._idle.get()
        try:
            return query(connection, *args)
        except BaseException as exc:
            # A query that failed part-way through a cursor's rows (a row that does not
            # decode, a disk error) left the cursor in its frame, which the traceback
            # holds: its statement, never reset, would keep this connection's snapshot
            # past the ROLLBACK for as long as the error lives, its next reads blind to
            # every later write and the WAL never checkpointed past it.
            traceback.clear_frames(exc.__traceback__)
            if isinstance(exc, sqlite3.Error):
                reason = f"reading the SQLite store at {self._path} failed: {exc}"
                raise StorageError(reason) from exc
            raise
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            self._give_back(connection)

    def _give_back(self, connection: sqlite3.Connection) -> None:
        with self._handover:
            if not self._closed:
                self._idle.put(connection)
                return
        connection.close()  # the store closed while it read (``close``)

    async def close(self) -> None:
        """No more reads; the connections closed, but those of reads still under way
        after ``CLOSE_WAIT`` seconds, which their threads close as the reads end."""
        jobs, self._jobs = self._jobs, None
        if jobs is not None:
            jobs.shutdown(wait=False)
            await jobs.ended_within(CLOSE_WAIT)
        with self._handover:
            self._closed = True
            idle = [self._idle.get() for _ in range(self._idle.qsize())]
        for connection in idle:
            connection.close()


# -- queries (each runs on a reader thread with its connection) --------------------------


def session_row(db: sqlite3.Connection, session_id: str) -> SessionRow | None:
    row: SessionRow | None = db.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    return row


def metadata(db: sqlite3.Connection, session_id: str) -> SessionMetadata | None:
    row = session_row(db, session_id)
    return None if row is None else metadata_of(row)


def existing(db: sqlite3.Connection, session_id: str) -> SessionMetadata:
    row = session_row(db, session_id)
    if row is None:
        raise SessionNotFound(f"session {session_id!r} not found")
    return metadata_of(row)


def live(db: sqlite3.Connection, session_id: str, now: datetime) -> SessionMetadata:
    """The session's metadata, unless it has expired by ``now`` (the store's clock)."""
    meta = existing(db, session_id)
    if meta.is_expired(now):
        raise SessionExpired(f"session {session_id!r} has expired")
    return meta


def log_position(
    db: sqlite3.Connection, session_id: str, epoch: str | None = None
) -> tuple[int, str, str]:
    """``(last_seq, state, epoch)`` of an existing session; with ``epoch``, only of a
    session of that epoch."""
    row = db.execute(
        "SELECT last_seq, state, epoch FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    if row is None or (epoch is not None and row[2] != epoch):
        raise SessionNotFound(f"session {session_id!r} not found")
    return row[0], row[1], row[2]


def load_session(
    db: sqlite3.Connection, session_id: str, now: datetime
) -> tuple[SessionMetadata, list[Message]] | None:
    db.execute("BEGIN")
    row = session_row(db, session_id)
    if row is None:
        return None
    meta = metadata_of(row)
    if meta.is_expired(now):
        raise SessionExpired(f"session {session_id!r} has expired")
    return meta, _messages(db, session_id, 0, meta.message_count)


def history(db: sqlite3.Connection, session_id: str, now: datetime) -> list[Message]:
    db.execute("BEGIN")
    meta = live(db, session_id, now)
    return _messages(db, session_id, 0, meta.message_count)


def history_page(
    db: sqlite3.Connection,
    session_id: str,
    limit: int,
    before: int | None,
    epoch: str | None,
    max_bytes: int | None,
    now: datetime,
) -> tuple[list[Message], int]:
    db.execute("BEGIN")
    meta = live(db, session_id, now)
    if epoch is not None and meta.epoch != epoch:  # another session took its id
        raise SessionNotFound(f"session {session_id!r} not found")
    start, end = page_bounds(meta.message_count, limit, before)
    if max_bytes is None:
        return _messages(db, session_id, start, end), start
    return _newest_messages(db, session_id, start, end, max_bytes)


def history_from(
    db: sqlite3.Connection,
    session_id: str,
    start: int,
    limit: int,
    epoch: str | None,
    max_bytes: int | None,
    now: datetime,
) -> tuple[list[Message], int]:
    """``get_history_from``: the page's messages, and its start."""
    db.execute("BEGIN")
    meta = live(db, session_id, now)
    if epoch is not None and meta.epoch != epoch:  # another session took its id
        raise SessionNotFound(f"session {session_id!r} not found")
    start, end = forward_bounds(meta.message_count, start, limit)
    return _messages(db, session_id, start, end, max_bytes), start


def _newest_messages(
    db: sqlite3.Connection, session_id: str, start: int, end: int, max_bytes: int
) -> tuple[list[Message], int]:
    """Messages ``start .. end`` read newest first, stopping at the first one whose
    event takes the sum past ``max_bytes`` (always keeping one); and the first's index."""
    rows = db.execute(
        "SELECT CAST(event AS BLOB) FROM events WHERE session_id = ? "
        "AND message_index >= ? AND message_index < ? ORDER BY message_index DESC",
        (session_id, start, end),
    )
    newest_first = _within(rows, max_bytes)
    newest_first.reverse()
    return newest_first, end - len(newest_first)


def _messages(
    db: sqlite3.Connection, session_id: str, start: int, end: int, max_bytes: int | None = None
) -> list[Message]:
    """Messages ``start .. end``, oldest first; with ``max_bytes``, only up to the first
    whose event takes the sum past it (always keeping one)."""
    if end <= start:
        return []
    rows = db.execute(
        "SELECT CAST(event AS BLOB) FROM events WHERE session_id = ? "
        "AND message_index >= ? AND message_index < ? ORDER BY message_index",
        (session_id, start, end),
    )
    if max_bytes is None:
        decode = _message_decoder.decode
        return [decode(data).message for (data,) in rows]
    return _within(rows, max_bytes)


def _within(rows: sqlite3.Cursor, max_bytes: int) -> list[Message]:
    """The messages of ``rows``' events in their order, up to the first whose event
    takes the sum past ``max_bytes`` (always keeping one)."""
    decode = _message_decoder.decode
    taken: list[Message] = []
    total = 0
    for (data,) in rows:  # stepped lazily: rows past the budget are never read
        total += len(data)
        if total > max_bytes and taken:
            break
        taken.append(decode(data).message)
    return taken


def events(
    db: sqlite3.Connection,
    session_id: str,
    after_seq: int,
    limit: int | None,
    max_bytes: int | None,
    epoch: str | None = None,
) -> list[StoredEvent]:
    """With ``epoch``, SessionNotFound if the session's log is of another epoch."""
    db.execute("BEGIN")
    found_epoch = db.execute("SELECT epoch FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if found_epoch is None or (epoch is not None and found_epoch[0] != epoch):
        raise SessionNotFound(f"session {session_id!r} not found")
    if limit is not None and limit <= 0:
        return []
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE session_id = ? AND seq > ? ORDER BY seq"
    if limit is None:
        rows = db.execute(sql, (session_id, after_seq))
    else:
        rows = db.execute(sql + " LIMIT ?", (session_id, after_seq, limit))
    if max_bytes is None:
        return [event_of(row) for row in rows]
    found: list[StoredEvent] = []
    total = 0
    for row in rows:  # stepped lazily: a small budget reads a few rows of a long log
        total += len(row[3])
        if total > max_bytes and found:
            break
        found.append(event_of(row))
    return found
