"""The SQLite backend beyond the contract suite: its URLs, read-only opening, the
one-process lock, the versioned schema, the indexes its queries rely on, group commit,
and the file as an operator sees it from the ``sqlite3`` module (as from the shell)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    SessionFilter,
    SessionFull,
    StorageError,
    StorageLocked,
    open_storage,
)
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.persistence.sqlite.schema import (
    APPLICATION_ID,
    LISTING_INDEXES_V3,
    SCHEMA_VERSION,
)
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.support import unprivileged


def url(path: Path, query: str = "") -> str:
    return f"sqlite://{path}{query}"


async def filled(path: Path) -> None:
    async with await open_storage(url(path)) as storage:
        await storage.create_session(Session.new("s1", user_id="u1", title="Chat"))
        await storage.append_message("s1", Message.user("hello"), key="k1")
        await storage.append_event("s1", AgentEvent.token("tok"))


# -- URLs -------------------------------------------------------------------------------


async def test_three_and_four_slashes_name_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    for text in (f"sqlite://{path}", f"sqlite:///{path}", f"sqlite:///{path}?durability=os"):
        async with await open_storage(text) as storage:
            assert await storage.last_seq("s1") == 2


async def test_bad_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability must be one of fsync, os"):
        await open_storage(url(tmp_path / "a.db", "?durability=sometimes"))
    with pytest.raises(ValueError, match="unknown option 'journal'"):
        await open_storage(url(tmp_path / "a.db", "?journal=delete"))
    assert not (tmp_path / "a.db").exists()


async def test_parent_directories_are_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "store.db"
    async with await open_storage(url(path)):
        pass
    assert path.is_file()


async def test_a_directory_is_refused_with_a_file_to_name_instead(tmp_path: Path) -> None:
    """`sqlite:///data` where data is a directory: one line saying what to write (it
    said "unable to open database file")."""
    (tmp_path / "data").mkdir()
    for read_only in (False, True):
        with pytest.raises(StorageError) as refused:
            await open_storage(url(tmp_path / "data"), read_only=read_only)
        assert str(refused.value) == (
            f"{tmp_path / 'data'} is a directory; an SQLite store is a file: name one in "
            f"it, e.g. sqlite://{tmp_path / 'data' / 'bamboo.db'}"
        )
    assert os.listdir(tmp_path) == ["data"] and os.listdir(tmp_path / "data") == []


# -- read-only ------------------------------------------------------------------------------


async def test_read_only_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no SQLite store at"):
        await open_storage(url(tmp_path / "missing.db"), read_only=True)
    assert os.listdir(tmp_path) == []


async def test_read_only_reads_and_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    async with await open_storage(url(path), read_only=True) as storage:
        assert [m.content for m in await storage.get_session_history("s1")] == ["hello"]
        assert (await storage.list_sessions(SessionFilter(user_id="u1"))).total == 1
        for call in (
            storage.append_event("s1", AgentEvent.token("x")),
            storage.create_session(Session.new("s2")),
            storage.update_session_state("s1", SessionState.CLOSED),
            storage.delete_session("s1"),
            storage.cleanup_expired_sessions(),
        ):
            with pytest.raises(StorageError, match="read-only"):
                await call
    async with await open_storage(url(path)) as storage:
        assert await storage.last_seq("s1") == 2
        assert await storage.get_metadata("s2") is None


# -- one process per file -----------------------------------------------------------------


async def test_a_second_writer_is_refused_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with await open_storage(url(path)):
        with pytest.raises(StorageLocked) as caught:
            await open_storage(url(path))
        reason = str(caught.value)
        assert "\n" not in reason and "is in use" in reason and "pid" in reason
        with pytest.raises(StorageLocked):
            await open_storage(url(path), read_only=True)
    async with await open_storage(url(path)):
        pass  # released on close


async def test_a_second_writer_through_a_symlink_is_refused(tmp_path: Path) -> None:
    """Two paths to one file, one a symlink to it: SQLite opens the same database
    through both, so the second writer is refused, as on the same path."""
    path, link = tmp_path / "store.db", tmp_path / "other" / "link.db"
    link.parent.mkdir()
    link.symlink_to(path)
    async with await open_storage(url(path)):
        with pytest.raises(StorageLocked, match="is in use"):
            await open_storage(url(link))
    async with await open_storage(url(link)):
        with pytest.raises(StorageLocked, match="is in use"):
            await open_storage(url(path))
    assert not (link.parent / "link.db.lock").exists()


async def test_readers_share_and_keep_a_writer_out(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    async with (
        await open_storage(url(path), read_only=True) as first,
        await open_storage(url(path), read_only=True) as second,
    ):
        assert await first.last_seq("s1") == await second.last_seq("s1") == 2
        with pytest.raises(StorageLocked, match="a reader"):
            await open_storage(url(path))


def test_another_process_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    script = (
        "import asyncio, sys\n"
        "from bamboo_session.persistence import open_storage, StorageLocked\n"
        "async def main():\n"
        "    try:\n"
        f"        await open_storage({url(path)!r})\n"
        "    except StorageLocked as exc:\n"
        "        print(exc); sys.exit(3)\n"
        "asyncio.run(main())\n"
    )

    async def hold() -> subprocess.CompletedProcess[str]:
        async with await open_storage(url(path)):
            return await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True
            )

    result = asyncio.run(hold())
    assert result.returncode == 3, result.stderr
    assert len(result.stdout.strip().splitlines()) == 1
    assert str(path) in result.stdout


# -- the file -------------------------------------------------------------------------------


async def test_schema_is_versioned_and_a_clean_close_leaves_one_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert sorted(os.listdir(tmp_path)) == ["store.db", "store.db.lock"]


async def test_a_newer_schema_or_a_foreign_file_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    await filled(newer)
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StorageError, match="newer than this bamboo-session reads"):
        await open_storage(url(newer))
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE notes (text TEXT)")
    db.close()
    with pytest.raises(StorageError, match="another program"):
        await open_storage(url(foreign))
    assert sqlite3.connect(foreign).execute("SELECT count(*) FROM notes").fetchone() == (0,)


async def test_an_empty_file_is_migrated_to_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.touch()
    async with await open_storage(url(path)) as storage:
        await storage.create_session(Session.new("s1"))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_an_operator_can_query_the_file(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    db = sqlite3.connect(path)
    assert db.execute(
        "SELECT id, user_id, state, last_seq, message_count FROM sessions"
    ).fetchall() == [("s1", "u1", "active", 2, 1)]
    rows = db.execute(
        "SELECT seq, key, json_extract(event, '$.type'), "
        "json_extract(event, '$.message.content') FROM events WHERE session_id = 's1' "
        "ORDER BY seq"
    ).fetchall()
    assert rows == [(1, "k1", "message", "hello"), (2, None, "token", None)]
    (when,) = db.execute("SELECT julianday(created_at) FROM sessions").fetchone()
    assert when > 2_400_000


def plan(db: sqlite3.Connection, sql: str, *params: object) -> str:
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))


async def test_the_hot_queries_use_indexes(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await filled(path)
    db = sqlite3.connect(path)
    key = plan(
        db,
        "SELECT seq FROM events WHERE session_id = ? AND key = ? ORDER BY seq DESC LIMIT 1",
        "s1",
        "k",
    )
    assert "USING COVERING INDEX events_by_key" in key and "SCAN" not in key
    history = plan(
        db,
        "SELECT event FROM events WHERE session_id = ? AND message_index >= ? "
        "AND message_index < ? ORDER BY message_index",
        "s1",
        0,
        10,
    )
    assert "events_by_message" in history and "SCAN" not in history
    listing = plan(
        db,
        "SELECT id FROM sessions WHERE user_id = ? ORDER BY created_at DESC, id DESC",
        "u1",
    )
    assert "sessions_by_user" in listing and "SCAN" not in listing


# -- group commit and failures ---------------------------------------------------------------


async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    storage = await SqliteStorage.open(SqliteStorageConfig(tmp_path / "store.db"))
    try:
        for i in range(20):
            await storage.create_session(Session.new(f"s{i}"))
        writer = storage._writer
        assert writer is not None
        before = writer.batches
        await asyncio.gather(
            *(storage.append_event(f"s{i % 20}", AgentEvent.token(str(i))) for i in range(400))
        )
        assert writer.batches - before < 100  # far fewer commits than appends
        assert sum([await storage.last_seq(f"s{i}") for i in range(20)]) == 400
    finally:
        await storage.close()


async def test_a_refused_call_does_not_fail_its_batch(tmp_path: Path) -> None:
    async with await open_storage(url(tmp_path / "store.db")) as storage:
        await storage.create_session(Session.new("open"))
        await storage.create_session(Session.new("shut"))
        await storage.update_session_state("shut", SessionState.CLOSED)
        results = await asyncio.gather(
            storage.append_event("open", AgentEvent.token("a")),
            storage.append_event("shut", AgentEvent.token("b")),
            storage.append_event("nope", AgentEvent.token("c")),
            storage.append_event("open", AgentEvent.token("d")),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "Appended",
            "SessionClosed",
            "SessionNotFound",
            "Appended",
        ]
        assert [e.seq for e in await storage.read_events("open")] == [1, 2]


async def test_subscribing_while_appends_commit_misses_nothing(tmp_path: Path) -> None:
    """subscribe reads the last seq on a reader thread while a commit may be published
    on the loop: what was acknowledged meanwhile must still reach the subscription. Each
    round subscribes while one append commits, then appends nothing more, so a missed
    publish would leave a subscriber waiting."""
    async with await open_storage(url(tmp_path / "store.db")) as storage:
        await storage.create_session(Session.new("s1"))

        async def subscriber(after: int) -> int:
            subscription = await storage.subscribe("s1", after)
            await asyncio.sleep(0.002)
            target = await storage.last_seq("s1")
            seqs: list[int] = []
            while (seqs[-1] if seqs else after) < target:
                batch = await asyncio.wait_for(subscription.next_batch(), 2)
                seqs.extend(e.seq for e in batch)
            subscription.close()
            assert seqs == list(range(after + 1, target + 1))
            return target

        for round_ in range(60):
            after = await storage.last_seq("s1")
            append = asyncio.create_task(storage.append_event("s1", AgentEvent.token("x")))
            subscribers = []
            for _ in range(8):
                subscribers.append(asyncio.create_task(subscriber(after)))
                await asyncio.sleep(0.0001 * (round_ % 7))
            await append
            assert set(await asyncio.gather(*subscribers)) <= {round_, round_ + 1}


async def test_checkpoints_run_beside_the_writer(tmp_path: Path) -> None:
    """The WAL is folded into the database file by the background checkpointer, while
    the store is open: the file alone (immutable=1 ignores the WAL) has the events."""
    path = tmp_path / "store.db"
    storage = await SqliteStorage.open(SqliteStorageConfig(path))
    try:
        await storage.create_session(Session.new("s1"))
        await storage.append_events("s1", [(AgentEvent.token(str(i)), None) for i in range(50)])
        checkpointer = storage._checkpointer
        assert checkpointer is not None
        for _ in range(40):
            if checkpointer.checkpoints >= 1:
                break
            await asyncio.sleep(0.1)
        assert checkpointer.checkpoints >= 1
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        assert db.execute("SELECT count(*) FROM events").fetchone() == (50,)
        db.close()
    finally:
        await storage.close()


async def test_the_documented_schema_is_the_schema(tmp_path: Path) -> None:
    """docs/storage-sqlite.md shows the tables and indexes an operator finds in a file."""
    doc = (Path(__file__).parent.parent / "docs" / "storage-sqlite.md").read_text()
    documented = sqlite3.connect(":memory:")
    documented.executescript(
        doc.split(f"## Schema (version {SCHEMA_VERSION})")[1].split("```sql")[1].split("```")[0]
    )
    path = tmp_path / "store.db"
    await filled(path)
    real = sqlite3.connect(path)

    def shape(db: sqlite3.Connection) -> list[tuple[object, ...]]:
        found: list[tuple[object, ...]] = []
        for kind, name, table in db.execute(
            "SELECT type, name, tbl_name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        ):
            info = "table_info" if kind == "table" else "index_xinfo"
            columns = [row[1:4] for row in db.execute(f"PRAGMA {info}({name})")]
            found.append((kind, name, table, columns))
        return found

    assert shape(documented) == shape(real)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_store_in_a_read_only_directory_opens_read_only() -> None:
    """A mounted backup: readable, no lock file to make, nothing created; a writing open
    fails in one line. Runs as an unprivileged user (root writes anywhere)."""
    drop = unprivileged()
    backup = Path(tempfile.mkdtemp(prefix="bamboo-ro-"))  # /tmp: reachable by nobody
    try:
        asyncio.run(filled(backup / "store.db"))
        (backup / "store.db.lock").unlink()
        (backup / "store.db").chmod(0o644)
        backup.chmod(0o555)
        script = (
            "import asyncio\n"
            "from bamboo_session.persistence import open_storage, StorageError\n"
            "async def main():\n"
            f"    url = {url(backup / 'store.db')!r}\n"
            "    async with await open_storage(url, read_only=True) as storage:\n"
            "        print(await storage.last_seq('s1'))\n"
            "    try:\n"
            "        await open_storage(url)\n"
            "    except StorageError as exc:\n"
            "        print(exc)\n"
            "asyncio.run(main())\n"
        )
        result = subprocess.run(
            [*drop, sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        seq, refusal = result.stdout.splitlines()
        assert seq == "2"
        assert refusal.startswith("cannot lock SQLite store") and "Permission denied" in refusal
        assert sorted(os.listdir(backup)) == ["store.db"]
    finally:
        backup.chmod(0o755)
        shutil.rmtree(backup)


async def test_a_file_of_version_1_gets_its_stored_bytes_counted_once(tmp_path: Path) -> None:
    """Version 2 added sessions.stored_bytes (what --max-session-bytes bounds); a file
    written before it has them counted from its events at its first writing open."""
    path = tmp_path / "store.db"
    await filled(path)
    async with await open_storage(url(path)) as storage:
        await storage.create_session(Session.new("empty"))
        before = {meta.id: meta.stored_bytes for meta in await storage.list_user_sessions("u1")}
        assert before["s1"] > 0
    db = sqlite3.connect(path)
    for index in LISTING_INDEXES_V3:  # version 3's
        db.execute(f"DROP INDEX {index}")
    db.execute("ALTER TABLE sessions DROP COLUMN stored_bytes")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    async with await open_storage(url(path), max_session_bytes=before["s1"] + 10) as storage:
        after = await storage.get_metadata("s1")
        assert after is not None and after.stored_bytes == before["s1"]
        assert (await storage.get_metadata("empty")).stored_bytes == 0  # type: ignore[union-attr]
        with pytest.raises(SessionFull):
            await storage.append_event("s1", AgentEvent.token("more than ten bytes"))
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
