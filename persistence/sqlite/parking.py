"""The park at a restart (``ParksAttached``, persistence/capabilities.py) on SQLite: each
step is one operation of the group-commit writer (``writer.py``), which parks the next
sessions of one state in the order of the ``sessions_by_state`` index, from where the
step before ended (so the sessions a step leaves, expired or written since, are not
read again): one ``UPDATE`` over that stretch of the index, its conditions checked
against the rows as they are, this batch's writes included (written out first). Each
state's oldest created first, which no caller relies on (persistence/parking.py says
why no order is promised): an order by ``updated_at`` would take an index of its own."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from bamboo_session.protocol.models import SessionState

from .batch import Batch

LEFT_ATTACHED: Final = (SessionState.ACTIVE.value, SessionState.IDLE.value)
_PARKED: Final = SessionState.DISCONNECTED.value
_STRETCH: Final = (
    "SELECT created_at, id FROM sessions WHERE state = ? AND (created_at, id) > (?, ?) "
    "ORDER BY created_at, id LIMIT ?"
)
_PARK: Final = (
    "UPDATE sessions SET state = ?, updated_at = ? "
    "WHERE state = ? AND (created_at, id) > (?, ?) AND (created_at, id) <= (?, ?) "
    "AND updated_at <= ? AND (expires_at IS NULL OR expires_at > ?) RETURNING id"
)

_LEFT: Final = (
    "SELECT 1 FROM sessions WHERE state IN (?, ?) AND updated_at <= ? "
    "AND (expires_at IS NULL OR expires_at > ?) LIMIT 1"
)

Cursor = tuple[str, str]  # (created_at, id) of the last session a step looked at
START: Final[Cursor] = ("", "")
Step = Callable[[Batch], tuple[int, Cursor | None]]
Write = Callable[[Step], Awaitable[tuple[int, Cursor | None]]]  # a step, group-committed


def park(
    batch: Batch, state: str, after: Cursor, since: str, limit: int
) -> tuple[int, Cursor | None]:
    """Parks the sessions of ``state`` past ``after`` (``limit`` of them looked at) whose
    ``updated_at`` is at or before ``since`` and that have not expired: how many, and where the
    next step starts (None: none left of that state)."""
    batch.flush()  # the statements below must see this batch's writes
    stretch = batch.db.execute(_STRETCH, (state, *after, limit)).fetchall()
    if not stretch:
        return 0, None
    last = (stretch[-1][0], stretch[-1][1])
    now = batch.now_text
    parked = batch.db.execute(_PARK, (_PARKED, now, state, *after, *last, since, now)).fetchall()
    for (session_id,) in parked:  # the copies of the row the writer keeps follow
        for row in (batch.rows.get(session_id), batch.cache.rows.get(session_id)):
            if row is not None:
                row.written(state=_PARKED, updated_at=now)
    return len(parked), last if len(stretch) == limit else None


async def steps(write: Write, since: str, limit: int) -> AsyncIterator[int]:
    """The park's steps, each one write (``write``, the store's group commit): how
    many sessions each parked."""
    for state in LEFT_ATTACHED:
        after: Cursor | None = START
        while after is not None:
            work = functools.partial(park, state=state, after=after, since=since, limit=limit)
            parked, after = await write(work)
            yield parked


def attached_left(db: sqlite3.Connection, since: str, now: str) -> bool:
    """Whether :func:`park` would park a session of either state (``since`` and ``now``
    as it takes them): ``ParksAttached.attached_left``."""
    return db.execute(_LEFT, (*LEFT_ATTACHED, since, now)).fetchone() is not None
