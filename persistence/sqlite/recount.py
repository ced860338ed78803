"""``bamboo-session recount`` on an SQLite store (persistence/recount.py): each
session's ``stored_bytes`` counted again from its rows of ``events``, as the schema's
version 2 counted it once (schema.py): the bytes of each event's JSON and key.

A session is counted and set by one operation of the writer, in its transaction, so the
writer's own rows and per-user sums (rows.py) move with it. The store keeps no per-user
sums on disk: a user's is the sum of its sessions' column, summed again by the writer
after an open, so a user's "rebuild" here only reads it. One process holds the file
(lock.py): the recount runs with no server on it.

A dry run (no writer: the store may be open read-only) reads each count and what the
log holds on a reader, and sets nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

from ..recount import SessionRecount, UserRebuild
from .batch import Batch

Reader = Callable[..., Awaitable[Any]]  # SqliteStorage._read: a query on a reader
Writer = Callable[[Callable[[Batch], Any]], Awaitable[Any]]  # SqliteStorage._write

PAGE: Final = 1000  # session ids read at a time

_LOG_BYTES: Final = """
    SELECT coalesce(sum(length(CAST(event AS BLOB)) + coalesce(length(CAST(key AS BLOB)), 0)), 0)
    FROM events WHERE session_id = ?"""
_USER_BYTES: Final = "SELECT coalesce(sum(stored_bytes), 0) FROM sessions WHERE user_id = ?"


class SqliteRecounter:
    """The recount of one store (persistence/recount.py ``BytesRecounter``); with no
    ``write``, a dry run."""

    def __init__(self, read: Reader, write: Writer | None) -> None:
        self._read = read
        self._write = write

    async def session_pages(self) -> AsyncIterator[list[str]]:
        after = ""
        while True:
            page: list[str] = await self._read(_ids_after, after)
            if not page:
                return
            yield page
            after = page[-1]

    async def recount_session(self, session_id: str) -> SessionRecount | None:
        if self._write is None:
            counted: SessionRecount | None = await self._read(_count, session_id)
            return counted
        result: SessionRecount | None = await self._write(lambda batch: _recount(batch, session_id))
        return result

    async def counted_users(self) -> AsyncIterator[list[str]]:
        return
        yield  # no sums are stored: nothing to drop

    async def rebuild_user(self, user_id: str) -> UserRebuild:
        total: int = await self._read(_user_bytes, user_id)
        return UserRebuild(user_id, total, total)


def _ids_after(db: sqlite3.Connection, after: str) -> list[str]:
    rows = db.execute(
        "SELECT id FROM sessions WHERE id > ? ORDER BY id LIMIT ?", (after, PAGE)
    ).fetchall()
    return [row[0] for row in rows]


def _user_bytes(db: sqlite3.Connection, user_id: str) -> int:
    return int(db.execute(_USER_BYTES, (user_id,)).fetchone()[0])


def _count(db: sqlite3.Connection, session_id: str) -> SessionRecount | None:
    """What :func:`_recount` would set, read and not written (a dry run)."""
    row = db.execute(
        "SELECT user_id, stored_bytes FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    if row is None:
        return None
    counted = int(db.execute(_LOG_BYTES, (session_id,)).fetchone()[0])
    return SessionRecount(session_id, row[0], int(row[1]), counted)


def _recount(batch: Batch, session_id: str) -> SessionRecount | None:
    """On the writer's thread, in its transaction."""
    row = batch.row(session_id)
    if row is None:
        return None
    batch.flush()  # this batch's events of the session are in the table
    counted = int(batch.db.execute(_LOG_BYTES, (session_id,)).fetchone()[0])
    before = row.stored_bytes
    if counted != before:
        batch.cache.grow_user(row.user_id, counted - before)
        row.advance(row.last_seq, row.message_count, counted)
    return SessionRecount(session_id, row.user_id, before, counted)
