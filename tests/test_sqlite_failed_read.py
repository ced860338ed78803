"""A read of the SQLite store that fails part-way through its rows (a row that does not
decode, a disk error mid-query) leaves the reader connection as it found it: the reads
after it, on the same connection, see every write acknowledged since."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.protocol.models import Message, Session


async def test_a_history_page_failing_mid_rows_leaves_no_stale_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStorage.open(SqliteStorageConfig(path)) as storage:
        for session_id in ("broken", "other"):
            await storage.create_session(Session.new(session_id, user_id="u1"))
        for text in ("one", "two", "three"):
            await storage.append_message("broken", Message.user(text))
        await storage.append_message("other", Message.user("before"))
    db = sqlite3.connect(path)
    with db:  # the middle message no longer decodes: read newest first, rows remain
        db.execute("UPDATE events SET event = '{}' WHERE session_id = 'broken' AND seq = 2")
    db.close()

    # One reader thread: every read below is on the connection the failed one used.
    async with await SqliteStorage.open(SqliteStorageConfig(path, readers=1)) as storage:
        with pytest.raises((msgspec.ValidationError, StorageError)) as failed:
            await storage.get_history_page("broken", 10, max_bytes=1_000_000)
        await storage.append_message("other", Message.user("after"))
        history = await storage.get_session_history("other")
        assert [m.content for m in history] == ["before", "after"]
        assert failed.value is not None  # the failure, alive until here, holds its frames
