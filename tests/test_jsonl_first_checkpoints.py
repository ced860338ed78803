"""The first checkpoints after a JSONL store's open, read from the system calls of a
real open, state writes (as a park makes them) and close (``strace``; skipped where it
is missing or not allowed): the open syncs the file system once (``syncfs``), and no
checkpoint file is synced on its own before its first write over a slot, which that
sync made safe (checkpoint.py). A sync per file made the close after a park of 100,000
sessions take 34 s.

Whether the snapshot of a clean close is there (the slots read at the first write) or
not (``kill -9``: the open read every checkpoint, and knows its slots)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.protocol.models import Session, SessionState

SESSIONS = 5

WRITE_AND_CLOSE = f"""
import asyncio, sys
from bamboo_session.persistence import open_storage
from bamboo_session.protocol.models import SessionState

async def main():
    storage = await open_storage(sys.argv[1])
    for number in range({SESSIONS}):  # written lazily: checkpointed by the close
        await storage.update_session_state(f"s{{number}}", SessionState.DISCONNECTED)
    await storage.close()

asyncio.run(main())
"""


async def stored_active(url: str) -> None:
    storage = await open_storage(url)
    try:
        for number in range(SESSIONS):
            await storage.create_session(Session.new(f"s{number}", user_id="u"))  # active
    finally:
        await storage.close()


def traced(tmp_path: Path, url: str) -> list[str]:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: apt-get install strace")
    trace = tmp_path / "trace"
    calls = "trace=fsync,fdatasync,syncfs,pwrite64"
    child = [sys.executable, "-c", WRITE_AND_CLOSE, url]
    run = subprocess.run(
        ["strace", "-f", "-y", "-e", calls, "-o", str(trace), *child],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    return trace.read_text().splitlines()


@pytest.mark.parametrize("snapshot", ["left by a clean close", "none: a kill"])
async def test_the_first_checkpoints_after_an_open_sync_no_file_of_their_own(
    tmp_path: Path, snapshot: str
) -> None:
    url = f"jsonl://{tmp_path / 'store'}?durability=fsync"
    await stored_active(url)
    if snapshot.startswith("none"):
        (tmp_path / "store" / "index" / "snapshot.msgpack").unlink()

    lines = await asyncio.to_thread(traced, tmp_path, url)

    checkpoint = r"\d+</[^>]*/sessions/s\d\.json>"
    store_synced = r"syncfs\(\d+</[^>]*/sessions>\)"
    syncs = [n for n, line in enumerate(lines) if re.search(store_synced, line)]
    writes = [n for n, line in enumerate(lines) if re.search(rf"pwrite64\({checkpoint}", line)]
    own_syncs = [line for line in lines if re.search(rf"f(data)?sync\({checkpoint}", line)]
    assert len(syncs) == 1, "\n".join(lines)
    assert len(writes) == SESSIONS and min(writes) > syncs[0], "\n".join(lines)
    assert own_syncs == []
    storage = await open_storage(url)
    try:
        parked = await storage.list_sessions(SessionFilter(state=SessionState.DISCONNECTED))
    finally:
        await storage.close()
    assert parked.total == SESSIONS
