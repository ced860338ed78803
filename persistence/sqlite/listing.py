"""The SQLite store's listing (``list_sessions``): a page of the sessions a filter
selects, by the index of its filter, how many match and how many it walked, and one
user's sessions. Runs on a reader's connection (reads.py)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import Final

import msgspec

from bamboo_session.protocol.models import SessionMetadata

from ..base import SessionFilter, SortBy, SortOrder
from .schema import SESSION_COLUMNS, metadata_of, time_text

_SORT_COLUMNS: Final = {
    SortBy.CREATED_AT: "created_at",
    SortBy.UPDATED_AT: "updated_at",
    SortBy.LAST_ACTIVITY_AT: "last_activity_at",
    SortBy.MESSAGE_COUNT: "message_count",
}


def list_sessions(
    db: sqlite3.Connection, query: SessionFilter
) -> tuple[list[SessionMetadata], int, int]:
    """One page of the sessions matching ``query``, how many match in all, and how many
    the count walked: the candidates the indexes select (by user, state and creation
    time), each of which is checked for a title or an activity time."""
    db.execute("BEGIN")
    checked, checked_params = _checked(query)
    if checked is None:  # every candidate the indexes select matches
        where, params = _where(query)
        total = examined = db.execute(f"SELECT count(*) FROM sessions{where}", params).fetchone()[0]
    else:  # one walk over the candidates counts them and those that match
        indexed = msgspec.structs.replace(query, title_contains=None, active_after=None)
        where, params = _where(indexed)
        counts = f"SELECT count(*), coalesce(sum({checked}), 0) FROM sessions{where}"
        examined, total = db.execute(counts, [*checked_params, *params]).fetchone()
    rows = db.execute(*page_query(query))
    return [metadata_of(row) for row in rows], total, examined


def _checked(query: SessionFilter) -> tuple[str | None, list[object]]:
    """What ``query`` checks on each candidate its indexes select (its title, its
    activity time) as one SQL condition (None: nothing), and its parameters."""
    conditions: list[str] = []
    params: list[object] = []
    if query.active_after is not None:
        conditions.append("last_activity_at >= ?")
        params.append(_bound(query.active_after))
    if query.title_contains is not None:
        conditions.append("instr(title, ?) > 0")  # case-sensitive: see _where
        params.append(query.title_contains)
    return (" AND ".join(conditions) or None), params


def page_query(query: SessionFilter) -> tuple[str, list[object]]:
    """The SQL of a listing's page, and its parameters."""
    where, params = _where(query)
    column = _SORT_COLUMNS[query.sort_by]
    direction = "DESC" if query.sort_order == SortOrder.DESC else "ASC"
    if query.after is not None:
        # Keyset: a row-value comparison that the sort column's index (which holds the
        # id too, the table being WITHOUT ROWID) seeks to, rather than stepping over
        # every row before it as OFFSET does.
        after = query.after.key
        key = time_text(after) if isinstance(after, datetime) else after
        beyond = f"({column}, id) {'<' if direction == 'DESC' else '>'} (?, ?)"
        where = f"{where} AND {beyond}" if where else f" WHERE {beyond}"
        params = [*params, key, query.after.id]
    sql = (
        f"SELECT {SESSION_COLUMNS} FROM sessions{where} "
        f"ORDER BY {column} {direction}, id {direction} LIMIT ? OFFSET ?"
    )
    return sql, [*params, max(query.limit, 0), max(query.offset, 0)]


def user_sessions(db: sqlite3.Connection, user_id: str) -> list[SessionMetadata]:
    rows = db.execute(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ? "
        "ORDER BY created_at DESC, id DESC",
        (user_id,),
    )
    return [metadata_of(row) for row in rows]


def _where(query: SessionFilter) -> tuple[str, list[object]]:
    clauses: list[str] = []
    params: list[object] = []

    def add(clause: str, value: object) -> None:
        clauses.append(clause)
        params.append(value)

    if query.user_id is not None:
        add("user_id = ?", query.user_id)
    if query.state is not None:
        add("state = ?", query.state.value)
    if query.created_after is not None:
        add("created_at >= ?", _bound(query.created_after))
    if query.created_before is not None:
        add("created_at < ?", _bound(query.created_before))
    if query.active_after is not None:
        add("last_activity_at >= ?", _bound(query.active_after))
    if query.title_contains is not None:
        # instr is case-sensitive, as the seed's contains (LIKE is not, for ASCII).
        add("instr(title, ?) > 0", query.title_contains)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _bound(moment: datetime) -> str:
    """A filter's time as stored times compare. A time whose UTC falls outside years
    1..9999 (``0001-01-01T00:00:00+01:00``: valid RFC 3339, from a query string) is
    below or above every stored time: the first or last one UTC has stands for it."""
    try:
        return time_text(moment)
    except OverflowError:
        utc_offset = moment.utcoffset()
        earliest = utc_offset is not None and utc_offset > timedelta(0)
        return time_text(datetime.min if earliest else datetime.max)
