"""A store file of schema version 2, written by the code of commit 0766b5b
(tests/fixtures/sqlite-0766b5b, its generate.py), opened by today's: a read-only open
asks for a writing one; the writing open migrates it to version 3 keeping every row
as it was, and its listings by update time and message count then seek in their
indexes; the rollback docs/storage-sqlite.md gives takes it back to exactly what
version 2 made."""

from __future__ import annotations

import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    ListPosition,
    SessionFilter,
    SortBy,
    SortOrder,
    StorageError,
    StorageLocked,
    open_storage,
)
from bamboo_session.persistence.sqlite.listing import page_query
from bamboo_session.persistence.sqlite.lock import store_lock
from bamboo_session.persistence.sqlite.schema import SCHEMA_VERSION
from bamboo_session.protocol.models import Message, SessionState

FIXTURE = Path(__file__).parent / "fixtures" / "sqlite-0766b5b" / "store.db"
DOC = Path(__file__).parent.parent / "docs" / "storage-sqlite.md"


def url(path: Path) -> str:
    return f"sqlite://{path}"


def rows(path: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    db = sqlite3.connect(path)
    try:
        sessions = db.execute("SELECT * FROM sessions ORDER BY id").fetchall()
        events = db.execute("SELECT * FROM events ORDER BY session_id, seq").fetchall()
    finally:
        db.close()
    return sessions, events


def schema(path: Path) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY name"
        ).fetchall()
    finally:
        db.close()


def contents(path: Path) -> bytes:
    return path.read_bytes()


def pragma(path: Path, name: str) -> object:
    db = sqlite3.connect(path)
    try:
        return db.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        db.close()


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    shutil.copyfile(FIXTURE, path)
    assert pragma(path, "user_version") == 2
    return path


async def test_a_read_only_open_of_version_2_asks_for_a_writing_one(old_file: Path) -> None:
    before = contents(old_file)
    with pytest.raises(StorageError, match="open it once for writing to migrate it to version 3"):
        await open_storage(url(old_file), read_only=True)
    assert contents(old_file) == before


async def test_a_read_only_open_during_a_migration_names_the_migrating_writer(
    old_file: Path,
) -> None:
    """While a writer migrates the file (its lock held, the file still at version 2 until
    the migration commits), a reader is told the store is in use and by whom, as for a
    running server's: not to open it for writing, which that writer is doing."""
    migrating = store_lock(old_file)
    migrating.take_exclusive()  # the lock a migrating server holds, as it holds it
    try:
        with pytest.raises(StorageLocked, match=f"is in use: another process \\(pid {os.getpid()}"):
            await open_storage(url(old_file), read_only=True)
    finally:
        migrating.release()
    with pytest.raises(StorageError, match="open it once for writing to migrate"):
        await open_storage(url(old_file), read_only=True)  # and once it is let go
    async with await open_storage(url(old_file), cleanup_interval=None):  # no lock left held
        pass
    assert pragma(old_file, "user_version") == SCHEMA_VERSION


async def test_the_migration_keeps_every_row_and_the_listings_seek(old_file: Path) -> None:
    sessions, events = rows(old_file)
    assert len(sessions) == 12 and len(events) == 30
    async with await open_storage(url(old_file), cleanup_interval=None) as storage:
        for sort_by, key in ((SortBy.UPDATED_AT, 5), (SortBy.MESSAGE_COUNT, 9)):
            for order in SortOrder:
                listed = await storage.list_sessions(
                    SessionFilter(sort_by=sort_by, sort_order=order)
                )
                expected = sorted(
                    sessions, key=lambda row: (row[key], row[0]), reverse=order is SortOrder.DESC
                )
                assert [meta.id for meta in listed.sessions] == [row[0] for row in expected]
        history = await storage.get_session_history("s04")
        assert [message.content for message in history] == [f"question {i}" for i in range(4)]
    assert pragma(old_file, "user_version") == SCHEMA_VERSION == 3
    assert rows(old_file) == (sessions, events)
    assert pragma(old_file, "integrity_check") == "ok"

    db = sqlite3.connect(old_file)
    for sort_by, key, index in (
        (SortBy.UPDATED_AT, datetime.fromisoformat(sessions[0][5]), "updated"),
        (SortBy.MESSAGE_COUNT, 2, "message_count"),
    ):
        for order in SortOrder:
            for filters, part in (
                ({}, ""),
                ({"user_id": "u1"}, "user_"),
                ({"state": SessionState.ACTIVE}, "state_"),
            ):
                for after in (None, ListPosition(key, "s04")):
                    query = SessionFilter(sort_by=sort_by, sort_order=order, after=after, **filters)
                    sql, params = page_query(query)
                    plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
                    assert len(plan) == 1, (query, plan)  # no sort after the read
                    assert f"USING INDEX sessions_by_{part}{index} " in plan[0] + " ", plan
                    if after is not None:
                        assert f"({sort_by.value},id)" in plan[0], plan
    db.close()


async def test_appends_after_the_migration_move_the_new_indexes(old_file: Path) -> None:
    """The listings follow the appends: message counts written (by the statement of
    appends with a message) and update times, in the indexes they are read from."""
    async with await open_storage(url(old_file), cleanup_interval=None) as storage:
        await storage.append_message("s01", Message.user("now the busiest"))
        for n in range(6):
            await storage.append_message("s01", Message.user(f"more {n}"))
        by_count = await storage.list_sessions(SessionFilter(sort_by=SortBy.MESSAGE_COUNT, limit=1))
        by_update = await storage.list_sessions(
            SessionFilter(user_id="u1", sort_by=SortBy.UPDATED_AT, limit=1)
        )
        assert [meta.id for meta in by_count.sessions] == ["s01"]
        assert [meta.id for meta in by_update.sessions] == ["s01"]
    assert pragma(old_file, "integrity_check") == "ok"


def rollback_statements() -> str:
    """The rollback to version 2, as docs/storage-sqlite.md gives it."""
    section = DOC.read_text().split("### Rolling back to version 2")[1]
    return section.split("```sql")[1].split("```")[0]


async def test_the_documented_rollback_gives_back_what_version_2_made(old_file: Path) -> None:
    made_by_version_2 = schema(old_file)
    async with await open_storage(url(old_file), cleanup_interval=None) as storage:
        await storage.append_message("s03", Message.user("written at version 3"))
    assert schema(old_file) != made_by_version_2
    sessions, events = rows(old_file)
    db = sqlite3.connect(old_file, isolation_level=None)
    db.executescript(rollback_statements())
    db.close()
    assert schema(old_file) == made_by_version_2
    assert pragma(old_file, "user_version") == 2
    assert rows(old_file) == (sessions, events)
    async with await open_storage(url(old_file), cleanup_interval=None) as storage:
        again = await storage.get_session_history("s03")
        assert [message.content for message in again] == ["written at version 3"]
    assert pragma(old_file, "user_version") == SCHEMA_VERSION


async def test_a_rollback_by_its_version_alone_migrates_again(old_file: Path) -> None:
    """An older server wrote to the file with the indexes kept (SQLite moved them):
    the next upgrade finds them built and opens."""
    async with await open_storage(url(old_file), cleanup_interval=None):
        pass
    db = sqlite3.connect(old_file)
    db.execute("PRAGMA user_version = 2")
    db.execute("UPDATE sessions SET message_count = 40 WHERE id = 's05'")  # as old code may
    db.commit()
    db.close()
    async with await open_storage(url(old_file), cleanup_interval=None) as storage:
        top = await storage.list_sessions(SessionFilter(sort_by=SortBy.MESSAGE_COUNT, limit=1))
        assert [meta.id for meta in top.sessions] == ["s05"]
    assert pragma(old_file, "user_version") == SCHEMA_VERSION
    assert pragma(old_file, "integrity_check") == "ok"
