"""A JSONL store closed on a full disk: the index snapshot a clean close leaves (a fast
start, nothing more) cannot be written. The close ends all the same, with a warning,
and the next open reads every session from its checkpoint. (The close raised the
snapshot's OSError, ENOSPC, out of ``close()``: a server stopping on a full disk ended
with a traceback.) A real tmpfs filled to its last byte (mounting needs root: skipped
without it)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import Session
from tests.disk_full_support import mounted_tmpfs

SESSIONS = 300


def fill(path: Path) -> None:
    """A file that takes every byte the file system has left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for chunk in (4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
    finally:
        os.close(fd)


async def test_a_close_on_a_full_disk_ends_and_the_next_open_reads_every_session(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        base = disk / "store"
        storage = await open_storage(str(base))
        for number in range(SESSIONS):
            await storage.create_session(Session.new(f"s{number}", user_id="u"))
        await storage.close()
        storage = await open_storage(str(base))  # consumes the snapshot: the close writes one
        fill(disk / "filler")
        with caplog.at_level(logging.WARNING):
            await storage.close()
        assert any("index snapshot not written" in r.getMessage() for r in caplog.records)
        assert not (base / "index" / "snapshot.msgpack").exists()
        os.unlink(disk / "filler")
        storage = await open_storage(str(base))
        try:
            for number in range(SESSIONS):
                assert await storage.get_metadata(f"s{number}") is not None
            assert not list((base / "index").glob("*.tmp"))
        finally:
            await storage.close()
