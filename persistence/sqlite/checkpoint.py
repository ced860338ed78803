"""Folding the WAL back into the database file, beside the writer rather than in its way.

SQLite checkpoints on its own inside a COMMIT once the WAL passes ``wal_autocheckpoint``
pages: with ``synchronous=FULL`` that is a sync of the WAL, a copy of every page it
holds, and a sync of the database file, on the writer's thread, while every append of
the next batch waits. Instead a connection of its own, on a thread of its own, runs
``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds: a passive checkpoint
never blocks the writer or the readers, and the writer restarts the WAL from its start
once a checkpoint has caught up. The writer keeps a high ``wal_autocheckpoint`` as a
safety net, should this one fall behind.

A checkpoint moves nothing that was not already durable: acknowledged means in the
synced WAL, checkpointed or not.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

from bamboo_session.tasks import cancel_and_wait

from .schema import connect_checkpointer

log = logging.getLogger(__name__)

INTERVAL: Final = 1.0  # seconds between passive checkpoints


class Checkpointer:
    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self._path = path
        self._interval = interval
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="bamboo-sqlite-checkpoint")
        self._db: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.checkpoints = 0  # for tests: passive checkpoints run

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._db = await loop.run_in_executor(self._thread, connect_checkpointer, self._path)
        self._task = asyncio.create_task(self._run(), name="bamboo-sqlite-checkpoint")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._interval)
            try:
                await loop.run_in_executor(self._thread, self._checkpoint)
            except sqlite3.Error as exc:
                # The writer's own checkpoints take over; the next round tries again.
                log.warning("checkpoint of %s failed: %s", self._path, exc)

    def _checkpoint(self) -> None:
        assert self._db is not None
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        self.checkpoints += 1
