"""One group commit's transaction in the SQLite store: :class:`Batch`, which the
operations of writes.py run in, on the writer thread (writer.py).

Sessions touched by a batch are read into a :class:`Row` (rows.py) once and written
back once, at the end of the batch (:meth:`Batch.flush`), however many appends they
had: seqs, the message count and the activity times move in memory, and the batch's
events go in with one statement at the end too (the keys among them are looked up in
memory first). The writer keeps the rows of recently written sessions between batches
(it is the only writer, so they stay true), and the sums of recently written users'
``stored_bytes``, and drops them all when a batch fails.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Final

from ..base import SessionExpired, SessionNotFound
from .rows import CLEAN, COUNTED, MOVED, Row, RowCache
from .schema import SESSION_COLUMNS, time_text

_INSERT_EVENT: Final = (
    "INSERT INTO events (session_id, seq, ts, key, message_index, event) "
    "VALUES (?, ?, ?, ?, ?, CAST(? AS TEXT))"
)
_NEWEST_OF_KEY: Final = (
    "SELECT seq FROM events WHERE session_id = ? AND key = ? ORDER BY seq DESC LIMIT 1"
)
# An append moves only these columns (and message_count, with a message): naming no
# other keeps SQLite from rewriting the entries of indexes on columns it did not change
# (state's, for one; message_count's three, for an append of tokens).
_UPDATE_ACTIVITY: Final = (
    "UPDATE sessions SET updated_at = ?, last_activity_at = ?, expires_at = ?, "
    "last_seq = ?, stored_bytes = ? WHERE id = ?"
)
_UPDATE_COUNTED: Final = (
    "UPDATE sessions SET updated_at = ?, last_activity_at = ?, expires_at = ?, "
    "message_count = ?, last_seq = ?, stored_bytes = ? WHERE id = ?"
)
_UPDATE_SESSION: Final = (
    "UPDATE sessions SET state = ?, updated_at = ?, last_activity_at = ?, expires_at = ?, "
    "ttl = ?, message_count = ?, last_seq = ?, extra = ?, stored_bytes = ? WHERE id = ?"
)
_USER_BYTES: Final = "SELECT coalesce(sum(stored_bytes), 0) FROM sessions WHERE user_id = ?"


class Batch:
    """One group commit's transaction: the connection, its time, the rows it touched."""

    def __init__(
        self, db: sqlite3.Connection, now: datetime, cache: RowCache, session_count: int | None
    ) -> None:
        self.db = db
        self.now = now
        self.now_text = time_text(now)
        self.cache = cache
        self.rows: dict[str, Row | None] = {}  # None: absent, or deleted in this batch
        self.session_count = session_count  # known count at the batch's start, or None
        self.session_delta = 0
        self.inserts: list[tuple[object, ...]] = []  # events, written by flush
        self.keys: dict[tuple[str, str], int] = {}  # (session, key) -> seq, of inserts
        self._expiry: dict[int, str] = {}

    def row(self, session_id: str) -> Row | None:
        if session_id in self.rows:
            return self.rows[session_id]
        row = self.cache.get(session_id)
        if row is None:
            found = self.db.execute(
                f"SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if found is not None:
                row = Row(list(found))
                self.cache.put(session_id, row)
        self.rows[session_id] = row
        return row

    def existing(self, session_id: str, epoch: str | None = None) -> Row:
        """The session's row; with ``epoch``, only if it is of that epoch (a session
        created again under the id, or a replaced one, is another's)."""
        row = self.row(session_id)
        if row is None or (epoch is not None and row.epoch != epoch):
            raise SessionNotFound(f"session {session_id!r} not found")
        return row

    def live(self, session_id: str, epoch: str | None = None) -> Row:
        row = self.existing(session_id, epoch)
        if row.is_expired(self.now_text):
            raise SessionExpired(f"session {session_id!r} has expired")
        return row

    def expiry(self, ttl: int | None) -> str | None:
        """When a session with ``ttl`` active now expires."""
        if ttl is None:
            return None
        text = self._expiry.get(ttl)
        if text is None:
            text = self._expiry[ttl] = time_text(self.now + timedelta(seconds=ttl))
        return text

    def seq_of_key(self, session_id: str, key: str) -> int | None:
        """The newest seq ``key`` was accepted with in the session (this batch first)."""
        seq = self.keys.get((session_id, key))
        if seq is None:
            newest = self.db.execute(_NEWEST_OF_KEY, (session_id, key)).fetchone()
            seq = None if newest is None else newest[0]
        return seq

    def user_bytes(self, user_id: str) -> int:
        """What the user's sessions hold, this batch's appends included: the writer's
        sum, else the rows' (this batch's changes written out first), kept from then."""
        total = self.cache.user_bytes(user_id)
        if total is None:
            self.flush()
            total = int(self.db.execute(_USER_BYTES, (user_id,)).fetchone()[0])
            self.cache.put_user(user_id, total)
        return total

    def sessions(self) -> int:
        if self.session_count is None:
            counted: int = self.db.execute("SELECT count(*) FROM sessions").fetchone()[0]
            self.session_count = counted - self.session_delta  # as at the batch's start
        return self.session_count + self.session_delta

    def flush(self) -> None:
        """Write the batch's events, and every row it changed."""
        if self.inserts:
            self.db.executemany(_INSERT_EVENT, self.inserts)
            self.inserts = []
        moved, counted, changed = [], [], []
        for row in self.rows.values():
            if row is None or row.dirty == CLEAN:
                continue
            v = row.values
            if row.dirty == MOVED:
                moved.append((v[5], v[6], v[7], v[10], v[13], v[0]))
            elif row.dirty == COUNTED:
                counted.append((v[5], v[6], v[7], v[9], v[10], v[13], v[0]))
            else:
                changed.append((v[3], v[5], v[6], v[7], v[8], v[9], v[10], v[12], v[13], v[0]))
            row.dirty = CLEAN
        if moved:
            self.db.executemany(_UPDATE_ACTIVITY, moved)
        if counted:
            self.db.executemany(_UPDATE_COUNTED, counted)
        if changed:
            self.db.executemany(_UPDATE_SESSION, changed)
