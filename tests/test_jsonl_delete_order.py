"""The order in which a JSONL delete's changes reach the disk, read from the system
calls of a real delete (``strace``; skipped where it is missing or not allowed): what a
power cut can leave is decided by which directory syncs come between them, which no
kill -9 shows (the kernel's view of the files is whole at any instant)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DELETE = """
import asyncio, sys
from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import AgentEvent, Message, Session

async def main():
    async with await JsonlStorage.open(JsonlStorageConfig(sys.argv[1])) as storage:
        await storage.create_session(Session.new("d", user_id="u"))
        await storage.append_message("d", Message.user("hello"))
        await storage.append_event("d", AgentEvent.token("t"))
        print("deleting", flush=True)
        await storage.delete_session("d")

asyncio.run(main())
"""


def _traced_delete(tmp_path: Path) -> list[str]:
    """The system calls (of every thread) that remove or sync a file, with the paths
    of their descriptors (``-y``), in the order they ran."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: apt-get install strace")
    trace = tmp_path / "trace"
    calls = "trace=unlink,unlinkat,rename,renameat,renameat2,fsync,fdatasync"
    child = [sys.executable, "-c", DELETE, str(tmp_path / "store")]
    run = subprocess.run(
        ["strace", "-f", "-y", "-e", calls, "-o", str(trace), *child],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0 and "ptrace" in run.stderr:
        pytest.skip(f"strace cannot trace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    return _resumed_calls_joined(trace.read_text().splitlines())


def _resumed_calls_joined(lines: list[str]) -> list[str]:
    """Each call strace split in two (``<unfinished ...>`` while another thread ran,
    then ``<... fsync resumed>``) as one line, where it started."""
    joined: list[str] = []
    unfinished: dict[str, int] = {}  # thread id -> index of its unfinished call
    for line in lines:
        thread = line.split(maxsplit=1)[0]
        if line.endswith("<unfinished ...>"):
            unfinished[thread] = len(joined)
            joined.append(line.removesuffix("<unfinished ...>").rstrip())
        elif "resumed>" in line and thread in unfinished:
            joined[unfinished.pop(thread)] += line.split("resumed>", 1)[1]
        else:
            joined.append(line)
    return joined


def _first(lines: list[str], pattern: str, after: int = -1) -> int:
    for number, line in enumerate(lines):
        if number > after and re.search(pattern, line):
            return number
    raise AssertionError(f"no {pattern!r} after line {after}")


def test_the_logs_removal_is_synced_before_the_tombstones(tmp_path: Path) -> None:
    """A power cut that keeps the tombstone's removal and loses the log's leaves the log
    alone, which an open reads as a session of its own (the deleted history back,
    under no user): the events directory is synced between the two."""
    lines = _traced_delete(tmp_path)
    renamed = _first(lines, r"rename.*sessions/d\.json\", .*sessions/d\.json\.deleted\"")
    log_removed = _first(lines, r"unlink.*events/d\.jsonl\"", renamed)
    tombstone_removed = _first(lines, r"unlink.*sessions/d\.json\.deleted\"", log_removed)
    between = lines[log_removed + 1 : tombstone_removed]
    assert any(re.search(r"fsync\(\d+</[^>]*/events>\)\s+= 0", line) for line in between), (
        "\n".join(lines[renamed : tombstone_removed + 1])
    )
