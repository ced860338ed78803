"""The store lock (persistence/flock.py) on a lock file that takes no bytes: a FIFO in
its place, as a full disk would fail the holder's pid write. The pid is there only for
a refusal's message, so the writer still opens and holds the lock (r338: it failed
with a bare OSError naming no file, and kept the lock it had taken)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import StorageLocked


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
async def test_a_lock_file_that_takes_no_pid_still_locks(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        url, lock = f"jsonl://{tmp_path / 'store'}", tmp_path / "store" / "LOCK"
    else:
        url, lock = f"sqlite:///{tmp_path / 's.db'}", tmp_path / "s.db.lock"
    storage = await open_storage(url)  # a store, then its lock file swapped by hand
    await storage.close()
    lock.unlink()
    os.mkfifo(lock)
    writer = await open_storage(url)
    try:
        with pytest.raises(StorageLocked):  # held all the same
            await open_storage(url, read_only=True, offline=True)
    finally:
        await writer.close()
    reader = await open_storage(url, read_only=True, offline=True)  # and let go
    await reader.close()
