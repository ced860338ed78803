"""The SQLite store's clock at open (persistence/clock.py): it starts from the newest
times the file holds, read through the indexes on a reader connection; one past
``FAR_AHEAD`` is left out, said with the sessions that hold it."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

from ..clock import StoreClock, far_ahead
from .reads import Readers
from .schema import time_text


async def start_clock(readers: Readers, clock: StoreClock, path: Path) -> None:
    """The clock starts from the newest times the store holds; one the clock leaves
    out (persistence/clock.py, ``FAR_AHEAD``) is said with the sessions that hold it,
    and the newest short of it read again: a column's newest alone, left out, hid
    every other (one an hour ahead, the clock went back behind)."""
    newest, bound = await readers.run(newest_times), far_ahead()
    where = f"the SQLite store {path}"
    if any(moment > bound for moment in newest):
        ids = await readers.run(sessions_after, time_text(bound))
        where += " (sessions " + ", ".join(map(repr, ids)) + ")"
        clock.saw(*newest, where=where)  # (said, and left out)
        newest = await readers.run(newest_times, time_text(bound))
    clock.saw(*newest, where=where)


def newest_times(db: sqlite3.Connection, bound: str | None = None) -> list[datetime]:
    """The newest times the store holds, for its clock (persistence/clock.py): of
    activity (events share it) and of creations, through their indexes, and of state
    writes, every session's: a park (at a peer's close, or a restart's) or a close is
    later than any activity, and a session's ``updated_at`` went back when the session
    was attached again after a restart with the clock set back. Each is one probe of
    its index (``updated_at``'s since schema version 3; before, one pass over the
    table, about 21 ms an open per 100,000 sessions: bench/sqlite_newest_times.py).
    Those not past ``bound`` (a time's text): the newest short of one the clock leaves
    out."""
    subqueries = ", ".join(
        f"(SELECT max({column}) FROM sessions"
        + ("" if bound is None else f" WHERE {column} <= ?1")
        + ")"
        for column in ("last_activity_at", "created_at", "updated_at")
    )
    found = db.execute(f"SELECT {subqueries}", () if bound is None else (bound,)).fetchone()
    return [datetime.fromisoformat(text) for text in found if text is not None]


def sessions_after(db: sqlite3.Connection, bound: str, most: int = 5) -> list[str]:
    """Ids of sessions holding a time the clock takes past ``bound`` (at most ``most``),
    for the error that names them (persistence/clock.py, ``FAR_AHEAD``): one pass."""
    rows = db.execute(
        "SELECT id FROM sessions WHERE updated_at > ?1 OR last_activity_at > ?1 "
        "OR created_at > ?1 LIMIT ?2",
        (bound, most),
    ).fetchall()
    return [row[0] for row in rows]
