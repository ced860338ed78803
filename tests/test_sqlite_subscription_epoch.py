"""A live subscription of the SQLite store reads behind only from the log it follows: a
replace (an expired session's, by a create) commits on the writer's thread before its
subscriptions end on the event loop, and a read between the two took the new log's
events as if they went on from the old one's."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bamboo_session.persistence.feed import DELETED
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.protocol.models import Message, Session


async def test_a_read_behind_after_a_replace_ends_the_subscription(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await SqliteStorage.open(SqliteStorageConfig(path)) as storage:
        await storage.create_session(Session.new("s", user_id="u1"))
        for text in ("one", "two", "three"):
            await storage.append_message("s", Message.user(text))
        subscription = await storage.subscribe("s", 0)  # behind: its read comes next
        # The replace as committed, its subscriptions not told yet: another epoch's log.
        db = sqlite3.connect(path)
        with db:
            db.execute("UPDATE sessions SET epoch = 'the replacement' WHERE id = 's'")
        db.close()

        assert await subscription.next_batch() == []
        assert subscription.ended == DELETED
