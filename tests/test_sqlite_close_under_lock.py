"""SQLite: the store's close while another process holds the database's write lock (the
``sqlite3`` shell left in ``BEGIN IMMEDIATE``), with an append waiting for it.

The close ends at once: the append waiting for the lock fails with a StorageError
(never an ack), nothing of it is stored, and the file stays sound; reads are answered
meanwhile (WAL: a reader never waits for a writer). Before, the close waited out
SQLite's busy timeout (10 s) for every batch still queued, while the writer's thread
slept in SQLite, and a server's stop with it. Once the lock is gone, the next open has
every acknowledged event, and the append sent again with its key is stored once."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import Storage, StorageError
from bamboo_session.protocol.events import Token
from bamboo_session.protocol.models import Session
from tests.stalled_disks_support import write_lock_held

PROMPT = 2.0  # seconds: a wait that ends at once on a loaded machine, well under 10 s
ACKED = 3


def token(number: int) -> tuple[Token, str]:
    return Token(content=f"event {number}"), f"k{number}"


async def store_with_acked(path: Path) -> Storage:
    """An SQLite store at ``path`` with session ``s`` and ACKED events acknowledged."""
    store = await open_storage(f"sqlite://{path}")
    await store.create_session(Session.new("s", now=store.now()))
    for number in range(1, ACKED + 1):
        await store.append_events("s", [token(number)])
    return store


async def test_a_close_does_not_wait_for_another_process_holding_the_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    url = f"sqlite://{path}"
    store = await store_with_acked(path)
    async with write_lock_held(path):
        held = asyncio.create_task(store.append_events("s", [token(ACKED + 1)]))
        await asyncio.sleep(0.3)
        assert not held.done()  # waiting for the lock
        # Reads go on beside the waiting write: in WAL mode no reader waits for a lock.
        events = await asyncio.wait_for(store.read_events("s"), PROMPT)
        assert [event.seq for event in events] == list(range(1, ACKED + 1))
        page = await asyncio.wait_for(store.get_history_page("s", 10), PROMPT)
        assert page.messages == []
        started = time.monotonic()
        await asyncio.wait_for(store.close(), 10 * PROMPT)
        took = time.monotonic() - started
        with pytest.raises(StorageError, match="database is locked"):
            await held
    assert took < PROMPT, took
    await appended_once_again(url, path)


async def appended_once_again(url: str, path: Path) -> None:
    """The lock gone: the acknowledged events, nothing of the failed append, a sound
    file, and the append sent again with its key stored once."""
    async with await open_storage(url) as store:
        events = await store.read_events("s")
        assert [event.key for event in events] == [f"k{n}" for n in range(1, ACKED + 1)]
        again = [await store.append_events("s", [token(ACKED + 1)]) for _ in range(2)]
        assert [(a[0].seq, a[0].duplicate) for a in again] == [(4, False), (4, True)]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
