"""A session's row of the SQLite store while the writer changes it (:class:`Row`, its
columns by name and how far it has moved: nothing, its activity, or anything), and the
rows of recently written sessions the writer keeps between batches
(:class:`RowCache`; it is the only writer, so they stay true), with what the sessions
of recently written users hold (the sums ``max_user_bytes`` is checked against). writes.py's
operations change them; a batch (batch.py) writes each row back once, at its end."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final

from bamboo_session.protocol.models import SessionMetadata, SessionState

from .schema import SESSION_COLUMNS, metadata_of

# A row's state of writing: nothing; its activity (seq, times, bytes); that and its
# message count; anything. Each is written by a statement naming only those columns,
# so that SQLite rewrites the entries of no index on a column that did not move.
CLEAN, MOVED, COUNTED, CHANGED = 0, 1, 2, 3
_EXPIRED: Final = SessionState.EXPIRED.value


class Row:
    """A session's row while a batch changes it."""

    __slots__ = ("dirty", "values")

    def __init__(self, values: list[Any]) -> None:
        self.values = values  # in SESSION_COLUMNS order
        self.dirty = CLEAN

    # Named views of the columns the writes use.
    @property
    def session_id(self) -> str:
        return str(self.values[0])

    @property
    def state(self) -> str:
        return str(self.values[3])

    @property
    def updated_at(self) -> str:
        return str(self.values[5])

    @property
    def ttl(self) -> int | None:
        ttl = self.values[8]
        return None if ttl is None else int(ttl)

    @property
    def message_count(self) -> int:
        return int(self.values[9])

    @property
    def last_seq(self) -> int:
        return int(self.values[10])

    @property
    def epoch(self) -> str:
        return str(self.values[11])

    @property
    def user_id(self) -> str | None:
        user = self.values[1]
        return None if user is None else str(user)

    @property
    def stored_bytes(self) -> int:
        return int(self.values[13])

    def is_expired(self, now: str) -> bool:
        expires_at = self.values[7]
        return self.state == _EXPIRED or (expires_at is not None and str(expires_at) <= now)

    def set(self, **changes: object) -> None:
        for name, value in changes.items():
            self.values[_COLUMN[name]] = value
        self.dirty = CHANGED

    def written(self, **changes: object) -> None:
        """Columns a statement of the batch wrote itself: the row follows, clean."""
        for name, value in changes.items():
            self.values[_COLUMN[name]] = value

    def advance(self, last_seq: int, message_count: int, stored_bytes: int) -> None:
        values = self.values
        moved = COUNTED if message_count != values[9] else MOVED
        values[9] = message_count
        values[10] = last_seq
        values[13] = stored_bytes
        self.dirty = max(self.dirty, moved)

    def touch(self, now: str, expires_at: str | None) -> None:
        values = self.values
        values[5] = values[6] = now  # updated_at, last_activity_at
        values[7] = expires_at
        self.dirty = max(self.dirty, MOVED)

    def metadata(self) -> SessionMetadata:
        return metadata_of(tuple(self.values))


_COLUMN: Final = {name.strip(): i for i, name in enumerate(SESSION_COLUMNS.split(","))}


class RowCache:
    """Rows of recently written sessions, kept by the writer between batches, and the
    sums of ``stored_bytes`` of recently written users (each the sum of the rows, this
    batch's changes included: moved with them, and dropped with them)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rows: OrderedDict[str, Row] = OrderedDict()
        self.users: OrderedDict[str, int] = OrderedDict()

    def clear(self) -> None:
        """A batch failed: nothing it changed in memory stays."""
        self.rows.clear()
        self.users.clear()

    def user_bytes(self, user_id: str) -> int | None:
        total = self.users.get(user_id)
        if total is not None:
            self.users.move_to_end(user_id)
        return total

    def put_user(self, user_id: str, total: int) -> None:
        self.users[user_id] = total
        if len(self.users) > self.size:
            self.users.popitem(last=False)

    def grow_user(self, user_id: str | None, delta: int) -> None:
        """The user's sum, if kept, moves with one of its sessions."""
        if user_id is not None and user_id in self.users:
            self.users[user_id] += delta

    def get(self, session_id: str) -> Row | None:
        row = self.rows.get(session_id)
        if row is not None:
            self.rows.move_to_end(session_id)
        return row

    def put(self, session_id: str, row: Row) -> None:
        self.rows[session_id] = row
        if len(self.rows) > self.size:
            self.rows.popitem(last=False)
