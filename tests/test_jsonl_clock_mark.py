"""A JSONL store writes a session's moves among the live states lazily (with its next
checkpoint): a park at its peer's close is in memory only, and a ``kill -9`` loses it.
Its ``updated_at`` was read meanwhile (a listing, an HTTP read). The next start parks
the session again, stamped by the store's clock, which started from the newest time
the store held on disk: with the machine's clock set back while the server was down,
behind the ``updated_at`` read before the kill, so the session's ``updated_at`` went
back, and a reader's ``updated_since`` cursor missed the park. The store keeps on
disk the time of each change it writes lazily, as the change is made (``<data
dir>/CLOCK``, persistence/jsonl/clock_mark.py), and its clock starts from it.

The first server is a child (tests/clock_mark_child.py: checkpoints an hour apart)
killed with SIGKILL; the second runs ``serve`` under libfaketime an hour behind
(skipped without it: apt-get install faketime). Real servers, a real store in a temp
dir."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.jsonl.clock_mark import MARK_NAME, read_mark
from bamboo_session.protocol.models import Session, SessionState
from tests.faketime_support import needs_libfaketime, under_faketime
from tests.instances import eventually
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_store_clock_restart import attached

CHILD = Path(__file__).with_name("clock_mark_child.py")


class Child:
    """The first server, in a process of its own, killed by its pid."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.port_file = log.with_name("port")
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(directory), str(self.port_file)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.port = 0

    async def listening(self) -> None:
        await eventually(lambda: self.port_file.exists() or self.proc.poll() is not None, 60)
        assert self.proc.poll() is None, "the child server ended"
        self.port = int(self.port_file.read_text())

    def url(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream/{session_id}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def metadata(port: int, session_id: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/sessions/{session_id}?limit=1"
    with urllib.request.urlopen(url, timeout=10) as answer:
        found: dict[str, Any] = json.loads(answer.read())["metadata"]
    return found


async def parked_metadata(port: int, session_id: str) -> dict[str, Any]:
    """The session's metadata once it reads ``disconnected``."""
    seen: list[dict[str, Any]] = []

    async def parked() -> bool:
        seen.append(await asyncio.to_thread(metadata, port, session_id))
        return seen[-1]["state"] == "disconnected"

    await eventually(parked, timeout=10)
    return seen[-1]


def time_of(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@needs_libfaketime
async def test_a_park_lost_at_a_kill_is_not_stamped_behind_the_time_read_before(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first = Child(data, tmp_path / "first.log")
    try:
        await first.listening()
        peer = await attached(first, "s", create=True)  # type: ignore[arg-type]
        await peer.close()  # parked at its close: written lazily, in memory only
        read_before = await parked_metadata(first.port, "s")
    finally:
        first.kill()

    second = ServerProcess(
        tmp_path / "serve", tmp_path / "second.log", "--store", f"jsonl://{data}"
    )
    # Its CLI with a sleep through select (tests/faketime_support.py): the close's wait
    # for the WAL sync helper sleeps, which libfaketime 0.9.10 fails with EINVAL.
    await under_faketime(second, FAKETIME="-1h").start_in_loop()
    try:
        read_after = await parked_metadata(second.port, "s")  # parked again by the start
    finally:
        assert await asyncio.to_thread(second.stop) == 0  # a graceful stop, as in service
    assert_no_tracebacks(second.log_records())
    assert time_of(read_after["updated_at"]) > time_of(read_before["updated_at"])  # a new write
    assert time_of(read_after["last_activity_at"]) >= time_of(read_before["last_activity_at"])


async def test_the_mark_on_disk_is_the_time_of_the_newest_lazy_change(
    tmp_path: Path,
) -> None:
    """What a kill leaves at any moment (the file as written, read beside the open
    store) is at or past every time a lazy change was stamped with, and no more."""
    storage = await open_storage(f"jsonl://{tmp_path}", cleanup_interval=None)
    try:
        await storage.create_session(Session.new("s", ttl=3600, now=storage.now()))
        for _ in range(50):
            await storage.update_session_state("s", SessionState.IDLE)  # lazily written
            await storage.update_session_state("s", SessionState.ACTIVE)
            await storage.touch("s")
            metadata = await storage.get_metadata("s")
            assert metadata is not None
            assert read_mark(tmp_path) == metadata.updated_at
    finally:
        await storage.close()
    assert read_mark(tmp_path) == metadata.updated_at  # the newest lazy change's, exactly


async def test_a_mark_that_does_not_read_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / MARK_NAME).write_text("not a time\n")
    storage = await open_storage(f"jsonl://{tmp_path}", cleanup_interval=None)
    try:
        await storage.create_session(Session.new("s", now=storage.now()))
        await storage.touch("s")
        assert read_mark(tmp_path) is not None  # written again
    finally:
        await storage.close()
    said = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("not a time: left out" in line for line in said), said


async def test_an_older_time_written_lazily_does_not_move_the_mark_back(tmp_path: Path) -> None:
    """The mark the last process left stands against an older time (an import's): the
    lazy changes it stands for may be lost, and the next open starts from it."""
    url = f"jsonl://{tmp_path}"
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await storage.create_session(Session.new("s", now=storage.now()))
        await storage.touch("s")
        left = read_mark(tmp_path)
    finally:
        await storage.close()
    storage = await open_storage(url, cleanup_interval=None)
    try:
        metadata = await storage.get_metadata("s")
        assert metadata is not None and left is not None
        metadata.updated_at = metadata.last_activity_at = left - timedelta(days=1)
        await storage.import_metadata(metadata)
        assert read_mark(tmp_path) == left
    finally:
        await storage.close()
