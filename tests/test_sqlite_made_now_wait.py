"""SQLite: a session made now (``create_session(..., made_now=True)``, as the server
makes every session a ``hello`` creates) takes the instant its transaction holds the
write lock, not the instant its batch began to wait for it.

The writer stamped each batch before ``BEGIN IMMEDIATE``, which waits up to the busy
timeout (10 s) while another connection writes (h417 left it): a session with a TTL
shorter than that wait was expired when its creation was acknowledged. A real file,
its lock held by another connection meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session

LOCK_HELD = 1.5  # seconds another connection holds the write lock
TTL = 1  # seconds: shorter than that wait


def hold_write_lock(path: Path, taken: threading.Event, released: list[datetime]) -> None:
    """Another connection's write transaction on ``path``, held LOCK_HELD seconds; the
    wall clock's time as it ends goes to ``released``."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        taken.set()
        threading.Event().wait(LOCK_HELD)
        released.append(datetime.now(UTC))
        other.execute("COMMIT")
    finally:
        other.close()


async def test_a_session_made_now_takes_the_instant_its_write_holds_the_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    async with await open_storage(f"sqlite://{path}") as store:
        taken, released = threading.Event(), []
        holder = asyncio.create_task(asyncio.to_thread(hold_write_lock, path, taken, released))
        assert await asyncio.to_thread(taken.wait, 10)
        session = Session.new("short", ttl=TTL, now=store.now())
        await store.create_session(session, made_now=True)
        await holder
        meta = await store.get_metadata("short")
        now = store.now()
    assert meta is not None
    # Stamped once the other's transaction had ended, not before the wait.
    assert meta.last_activity_at >= released[0], (meta.last_activity_at, released[0])
    assert meta.expires_at is not None and meta.expires_at > released[0]
    assert not meta.is_expired(meta.last_activity_at), now
