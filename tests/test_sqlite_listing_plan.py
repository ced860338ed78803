"""The SQLite store's page after a keyset position (the HTTP ``cursor``) seeks in an
index: ``EXPLAIN QUERY PLAN`` of the very query the store runs, on a store file it
made, names an index with the position's row-value comparison in it (no scan, no
sort) for the listings by creation time (all, one user's, one state's) and by
activity; and the pages it gives are the offset pages of the same listing."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bamboo_session.persistence import ListPosition, SessionFilter, SortBy, SortOrder, open_storage
from bamboo_session.persistence.sqlite.reads import page_query
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
    position = ListPosition(BASE, "s05")
    for order in SortOrder:
        for query in (
            SessionFilter(sort_order=order, after=position),
            SessionFilter(user_id="u1", sort_order=order, after=position),
            SessionFilter(state=SessionState.ACTIVE, sort_order=order, after=position),
            SessionFilter(sort_by=SortBy.LAST_ACTIVITY_AT, sort_order=order, after=position),
        ):
            sql, params = page_query(query)
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert len(plan) == 1, (query, plan)
            assert plan[0].startswith("SEARCH sessions USING INDEX"), (query, plan)
            assert "(created_at,id)" in plan[0] or "(last_activity_at,id)" in plan[0], plan
    db.close()
