"""The SQLite store's WAL fold (persistence/sqlite/checkpoint.py's WalFold) never holds
a healthy store's writes because of readers: not at open, where a WAL a crash left is
folded in, nor after a full disk, where the writes wait only while the fold itself
fails for want of space.

Reproducer of reviewer r345's finding: while another connection was in a read
transaction, the fold's TRUNCATE checkpoint waited out the writer's busy timeout (10 s)
on the writer's thread, then refused the batch, for as long as the reader read. The
full-disk test needs root (it mounts a tmpfs); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import Session
from tests.disk_full_support import mounted_tmpfs

PROMPT = 2.0  # seconds: an append's answer, well under the writer's wait for a lock (10 s)


def token(tag: str, padding: int = 1000) -> AgentEvent:
    return AgentEvent.token(tag + "x" * padding)


async def test_a_reader_does_not_refuse_the_writes_of_a_store_opened_after_a_crash(
    tmp_path: Path,
) -> None:
    """r345's reproducer: a store left with a WAL (what a kill -9 leaves) is opened
    while another program's connection is in the middle of a read."""
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    config = SqliteStorageConfig(tmp_path / "store.db", durability="os")
    async with await SqliteStorage.open(config) as storage:
        await storage.create_session(Session.new("s1"))
        for i in range(50):
            await storage.append_event("s1", token(f"t{i}"))
        await asyncio.sleep(0.2)
        # What a kill -9 leaves: the database file and its WAL, as they are now.
        for name in ("store.db", "store.db-wal"):
            shutil.copy(tmp_path / name, crashed / name)
    assert (crashed / "store.db-wal").stat().st_size > 0
    reader = sqlite3.connect(crashed / "store.db", isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 50
        config = SqliteStorageConfig(crashed / "store.db", durability="os")
        async with await SqliteStorage.open(config) as storage:
            # Every append while the reader reads, not only the first: the fold left
            # pending is tried again while they flow.
            for i in range(8):
                started = time.monotonic()
                try:
                    await asyncio.wait_for(storage.append_event("s1", token(f"new{i}")), 3)
                except (StorageError, TimeoutError) as exc:
                    waited = time.monotonic() - started
                    raise AssertionError(
                        f"append {i} refused after {waited:.1f} s while a reader reads: {exc!r}"
                    ) from exc
                await asyncio.sleep(0.1)
            assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == 50
            reader.execute("COMMIT")
            await asyncio.sleep(0.3)
            await storage.append_event("s1", token("after"))
            history = await storage.read_events("s1")
            assert len(history) == 50 + 8 + 1
    finally:
        reader.close()


async def test_a_reader_does_not_hold_the_writes_once_a_full_disk_has_room(
    tmp_path: Path,
) -> None:
    """A store fills its disk; a reader then reads in one long transaction (the server's
    own whole-history reads are one) while an operator frees space. Every append is
    answered at once, and once the reader is done they all succeed again; nothing
    acknowledged is lost."""
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        ballast = disk / "ballast"
        ballast.write_bytes(b"\0" * (1 << 20))
        path = disk / "store.db"
        config = SqliteStorageConfig(path, durability="os")
        acked: list[str] = []
        async with await SqliteStorage.open(config) as storage:
            await storage.create_session(Session.new("s1"))
            for i in range(10_000):
                try:
                    await storage.append_event("s1", token(f"fill{i}.", 2000))
                except StorageError:
                    break
                acked.append(f"fill{i}.")
            else:
                raise AssertionError("the disk never filled")
            reader = sqlite3.connect(path, isolation_level=None)
            try:
                reader.execute("BEGIN")
                assert reader.execute("SELECT count(*) FROM events").fetchone()[0] == len(acked)
                ballast.unlink()
                for i in range(12):
                    started = time.monotonic()
                    try:
                        await asyncio.wait_for(storage.append_event("s1", token(f"r{i}.")), 5)
                        acked.append(f"r{i}.")
                    except StorageError:
                        pass  # refused at once: the fold itself found no room
                    except TimeoutError:
                        pass  # told below
                    waited = time.monotonic() - started
                    assert waited < PROMPT, f"append {i} waited {waited:.1f} s for a reader"
                    await asyncio.sleep(0.1)
            finally:
                reader.close()
            await asyncio.sleep(0.3)
            for i in range(5):
                await storage.append_event("s1", token(f"after{i}."))
                acked.append(f"after{i}.")
        async with await SqliteStorage.open(config) as storage:
            history = await storage.read_events("s1")
        contents = [str(getattr(stored.event, "content", "")) for stored in history]
        assert [content.split(".")[0] + "." for content in contents] == acked
