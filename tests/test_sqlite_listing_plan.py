"""The SQLite store's page after a keyset position (the HTTP ``cursor``) seeks in an
index: ``EXPLAIN QUERY PLAN`` of the very query the store runs, on a store file it
made, names an index with the position's row-value comparison in it (no scan, no
sort) for the listings by creation time, update time and message count (all, one
user's, one state's) and by activity; a first page (no position) walks an index in
order too; and the pages it gives are the offset pages of the same listing."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bamboo_session.persistence import ListPosition, SessionFilter, SortBy, SortOrder, open_storage
from bamboo_session.persistence.sqlite.listing import page_query
from bamboo_session.protocol.models import Session, SessionMetadata, SessionState

BASE = datetime(2026, 1, 1, tzinfo=UTC)


async def test_a_page_after_a_position_seeks_in_an_index(tmp_path: Path) -> None:
    storage = await open_storage(f"sqlite://{tmp_path / 's.db'}", cleanup_interval=None)
    try:
        for number in range(30):
            moment = BASE + timedelta(seconds=number // 3)  # ties of three
            metadata = SessionMetadata(
                id=f"s{number:02d}",
                user_id=f"u{number % 2}",
                created_at=moment,
                updated_at=moment,
                last_activity_at=moment,
            )
            await storage.create_session(Session(metadata=metadata))
        for order in SortOrder:
            whole = await storage.list_sessions(SessionFilter(sort_order=order, limit=100))
            ids = [m.id for m in whole.sessions]
            for at in (0, 4, 13, 29):
                last = whole.sessions[at]
                after = ListPosition(last.created_at, last.id)
                page = await storage.list_sessions(
                    SessionFilter(sort_order=order, limit=5, after=after)
                )
                assert [m.id for m in page.sessions] == ids[at + 1 : at + 6]
                assert page.total == 30
    finally:
        await storage.close()

    db = sqlite3.connect(tmp_path / "s.db")
    for sort_by, position in (
        (SortBy.CREATED_AT, ListPosition(BASE, "s05")),
        (SortBy.UPDATED_AT, ListPosition(BASE, "s05")),
        (SortBy.MESSAGE_COUNT, ListPosition(3, "s05")),
    ):
        for order in SortOrder:
            for query in (
                SessionFilter(sort_by=sort_by, sort_order=order, after=position),
                SessionFilter(user_id="u1", sort_by=sort_by, sort_order=order, after=position),
                SessionFilter(
                    state=SessionState.ACTIVE, sort_by=sort_by, sort_order=order, after=position
                ),
            ):
                plan = query_plan(db, query)
                assert len(plan) == 1, (query, plan)
                assert plan[0].startswith("SEARCH sessions USING INDEX"), (query, plan)
                assert f"({sort_by.value},id)" in plan[0], (query, plan)
    for order in SortOrder:
        query = SessionFilter(sort_by=SortBy.LAST_ACTIVITY_AT, sort_order=order, after=BASE_AT)
        plan = query_plan(db, query)
        assert len(plan) == 1 and plan[0].startswith("SEARCH sessions USING INDEX"), plan
        assert "(last_activity_at,id)" in plan[0], plan
    db.close()


BASE_AT = ListPosition(BASE, "s05")


def query_plan(db: sqlite3.Connection, query: SessionFilter) -> list[str]:
    sql, params = page_query(query)
    return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]


async def test_a_first_page_by_any_sort_reads_an_index_in_order(tmp_path: Path) -> None:
    """No cursor: the page walks the sort's index (all sessions, or one user's or one
    state's part of it) and stops at its limit; no sort of every match first. (By
    activity only the whole listing has an index.)"""
    storage = await open_storage(f"sqlite://{tmp_path / 's.db'}", cleanup_interval=None)
    await storage.close()
    db = sqlite3.connect(tmp_path / "s.db")
    for sort_by in SortBy:
        queries = [SessionFilter(sort_by=sort_by, sort_order=order) for order in SortOrder]
        if sort_by is not SortBy.LAST_ACTIVITY_AT:
            queries += [
                SessionFilter(user_id="u1", sort_by=sort_by, sort_order=order)
                for order in SortOrder
            ]
            queries += [
                SessionFilter(state=SessionState.IDLE, sort_by=sort_by, sort_order=order)
                for order in SortOrder
            ]
        for query in queries:
            plan = query_plan(db, query)
            assert len(plan) == 1, (query, plan)
            assert "USE TEMP B-TREE" not in plan[0], (query, plan)
            assert "USING INDEX" in plan[0], (query, plan)
    db.close()
