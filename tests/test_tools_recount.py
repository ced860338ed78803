"""``bamboo-session recount`` on the stores one process holds, as an operator runs it:
SQLite counts set right from the events (a count that drifted, then the user's bound
refuses what it should), nothing changed on a store whose counts are right; JSONL,
which counts at every open, only reported; both refused while a server holds them. The
Redis store, shared by live servers, has its own tests (test_redis_recount.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bamboo_session.persistence import UserFull
from bamboo_session.persistence.events import stored_size
from bamboo_session.persistence.jsonl import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.support import run_server
from tests.test_cli_offline import snapshot, tool
from tests.test_cli_tools import make_data_dir


def summary(sessions: int, total: int, fixed: int, users: int, sums: int) -> str:
    return (
        f"recount: {sessions:,} sessions holding {total:,} bytes, {fixed:,} fixed; "
        f"{users:,} users, {sums:,} sums fixed"
    )


async def make_sqlite(path: Path) -> dict[str, int]:
    """Sessions a and b of user u, c of none; each session's count, as the store made it."""
    async with await SqliteStorage.open(SqliteStorageConfig(path, durability="os")) as storage:
        for session_id, user in (("a", "u"), ("b", "u"), ("c", None)):
            await storage.create_session(Session.new(session_id, user_id=user))
            for n in range(12):
                key = f"k{n}-ü" if n % 2 else None  # a key's bytes, not its characters
                await storage.append_event(session_id, AgentEvent.token("é" * (n * 10)), key)
            await storage.append_message(session_id, Message.user("hello"))
        counts = {}
        for session_id in "abc":
            meta = await storage.get_metadata(session_id)
            assert meta is not None and meta.stored_bytes > 1000
            counts[session_id] = meta.stored_bytes
        return counts


def sql(path: Path, statement: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(statement)
    db.close()


async def append_within(path: Path, cap: int) -> bool:
    """Whether the store, opened with ``max_user_bytes=cap``, takes an event into b."""
    config = SqliteStorageConfig(path, durability="os", max_user_bytes=cap)
    async with await SqliteStorage.open(config) as storage:
        try:
            await storage.append_event("b", AgentEvent.token("x" * 100))
        except UserFull:
            return False
        return True


async def test_sqlite_counts_that_drifted_are_set_right(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    counts = await make_sqlite(path)
    url = f"sqlite://{path}"
    sql(path, "UPDATE sessions SET stored_bytes = 0 WHERE id = 'a'")
    sql(path, "UPDATE sessions SET stored_bytes = stored_bytes + 99 WHERE id = 'c'")
    # Under the drift, the user's sum leaves a's bytes out: room that is not there.
    user_total = counts["a"] + counts["b"]
    cap = user_total + 50
    assert await append_within(path, cap)
    counts["b"] += stored_size(encode_event(AgentEvent.token("x" * 100)), None)
    user_total = counts["a"] + counts["b"]

    code, out, err = await asyncio.to_thread(tool, "recount", "--store", url)
    assert code == 0, err
    total = sum(counts.values())
    assert out.splitlines() == [
        f"session a (user u): 0 -> {counts['a']:,} bytes",
        f"session c: {counts['c'] + 99:,} -> {counts['c']:,} bytes",
        f"user u: sum {counts['a']:+,} bytes, now {user_total:,}",
        summary(3, total, 2, 1, 1),
    ]
    assert not await append_within(path, cap)  # the user's sum counts a again
    code, out, _ = await asyncio.to_thread(tool, "recount", "--store", url)
    assert (code, out.splitlines()) == (0, [summary(3, total, 0, 1, 0)])
    code, out, err = await asyncio.to_thread(tool, "recount", "--store", url, "c", "nobody")
    assert (code, out.splitlines()) == (1, [summary(1, counts["c"], 0, 0, 0)])
    assert err.strip().splitlines() == [
        "bamboo-session: recount: sessions counted: 1",  # progress, last shown at the end
        "bamboo-session: recount: no session nobody",
    ]


def rows(path: Path) -> list[str]:
    """Every row of the store's file, as SQL (its schema too)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        dumped = list(db.iterdump())
    db.close()
    return dumped


def dry(lines: list[str]) -> list[str]:
    """A run's lines as a dry run prints them: its totals say what would be fixed."""
    totals = lines[-1].replace(" fixed", " to fix") + " (dry run: nothing written)"
    return [*lines[:-1], totals]


async def test_a_sqlite_dry_run_writes_nothing_and_reports_what_the_run_applies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    counts = await make_sqlite(path)
    url = f"sqlite://{path}"
    sql(path, "UPDATE sessions SET stored_bytes = 0 WHERE id = 'a'")
    sql(path, "UPDATE sessions SET stored_bytes = stored_bytes + 99 WHERE id = 'c'")
    before, file_before = rows(path), path.read_bytes()
    for ids in (["c", "a"], []):
        code, dry_out, err = await asyncio.to_thread(
            tool, "recount", "--store", url, "--dry-run", *ids
        )
        assert code == 0, err
        assert (rows(path), path.read_bytes()) == (before, file_before)
    # The run after it prints the same figures, and applies them.
    code, out, err = await asyncio.to_thread(tool, "recount", "--store", url)
    assert code == 0, err
    total = sum(counts.values())
    assert out.splitlines() == [
        f"session a (user u): 0 -> {counts['a']:,} bytes",
        f"session c: {counts['c'] + 99:,} -> {counts['c']:,} bytes",
        f"user u: sum {counts['a']:+,} bytes, now {counts['a'] + counts['b']:,}",
        summary(3, total, 2, 1, 1),
    ]
    assert dry_out.splitlines() == dry(out.splitlines())
    with sqlite3.connect(path) as db:
        stored = dict(db.execute("SELECT id, stored_bytes FROM sessions").fetchall())
    db.close()
    assert stored == counts
    # With ids: the dry run's lines are those of the run with the same ids.
    sql(path, "UPDATE sessions SET stored_bytes = 5 WHERE id = 'b'")
    code, dry_out, _ = await asyncio.to_thread(tool, "recount", "--store", url, "--dry-run", "b")
    code, out, _ = await asyncio.to_thread(tool, "recount", "--store", url, "b")
    assert out.splitlines()[0] == f"session b (user u): 5 -> {counts['b']:,} bytes"
    assert dry_out.splitlines() == dry(out.splitlines())


def test_a_path_that_is_no_sqlite_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "none" / "store.db"
    code, out, err = tool("recount", "--store", f"sqlite://{path}")
    assert (code, out, err.strip()) == (1, "", f"bamboo-session: no SQLite store at {path}")
    assert not path.parent.exists()


async def test_sqlite_is_refused_while_a_server_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    await make_sqlite(path)
    sql(path, "UPDATE sessions SET stored_bytes = 0 WHERE id = 'a'")
    async with await SqliteStorage.open(SqliteStorageConfig(path, durability="os")):
        code, out, err = await asyncio.to_thread(tool, "recount", "--store", f"sqlite://{path}")
    assert (code, out) == (1, "")
    assert err.strip() == (
        f"bamboo-session: {path} is in use by a running server; stop it first: a JSONL "
        "or SQLite store is recounted offline"
    )
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT stored_bytes FROM sessions WHERE id = 'a'").fetchone() == (0,)
    db.close()


def test_jsonl_is_reported_as_counted_and_left_as_it_is(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    logs = sum(log.stat().st_size for log in (data_dir / "events").glob("*.jsonl"))
    assert logs > 0
    before = snapshot(data_dir)
    code, out, err = tool("recount", "--data-dir", str(data_dir))
    assert code == 0, err
    assert out.splitlines() == [summary(4, logs, 0, 3, 0)]
    assert err.strip() == (
        "bamboo-session: recount: the JSONL store counts each session's bytes (its log "
        "file's size) and each user's sum whenever it opens: nothing stored to fix"
    )
    assert snapshot(data_dir) == before
    code, dry_out, _ = tool("recount", "--data-dir", str(data_dir), "--dry-run")
    assert (code, dry_out.splitlines()) == (0, dry(out.splitlines()))
    assert snapshot(data_dir) == before
    code, out, err = tool("recount", "--data-dir", str(data_dir), "nobody", "b")
    assert (code, out.splitlines()) == (1, [summary(1, 0, 0, 1, 0)])
    assert err.strip().splitlines()[-1] == "bamboo-session: recount: no session nobody"


@pytest.mark.parametrize("holder", ["server", "storage"])
async def test_jsonl_is_refused_while_a_server_holds_it(tmp_path: Path, holder: str) -> None:
    data_dir = await asyncio.to_thread(make_data_dir, tmp_path / "data")
    if holder == "server":
        held = run_server(data_dir, durability="os")
    else:
        held = await JsonlStorage.open(JsonlStorageConfig(data_dir, durability="os"))
    async with held:
        code, out, err = await asyncio.to_thread(tool, "recount", "--data-dir", str(data_dir))
    assert (code, out) == (1, "")
    assert "is in use by a running server; stop it first" in err
