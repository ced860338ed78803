"""The JSONL log writer's bound on open session-log descriptors (README: ``max_open``
between commits, three times that at peak), in both durability modes: with their
background syncs (``os`` mode's rounds, the WAL's retirement of old segments), which
open logs of their own, on threads, while the writer commits.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from bamboo_session.persistence.jsonl import logfiles, wal
from bamboo_session.persistence.jsonl.config import Durability
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.persistence.jsonl.wal import SegmentFile
from bamboo_session.persistence.jsonl.writer import LogWriter
from tests.test_jsonl_writer import Reports, batch, made_layout

MAX_OPEN = 3
SESSIONS = 40


def logs_open(layout: Layout) -> int:
    """This process's descriptors of the layout's session logs: what the writer holds
    (the process's other descriptors come and go with other tests' threads)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        count += target.endswith(".jsonl") and target.startswith(str(layout.log("x").parent))
    return count


@pytest.mark.parametrize("durability", ["os", "fsync"])
async def test_descriptors_stay_within_the_bound(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    durability: Durability,
) -> None:
    # Counted inside every sync, while the sync threads hold their descriptors; the
    # syncs are slowed (a slow disk) so that the threads' descriptors overlap. With
    # durability=fsync, WAL segments of 4 KiB: rotated, then retired, every few
    # batches, each retirement syncing the logs its segment touched, by path.
    layout, reports = made_layout(tmp_path), Reports()
    seen: list[int] = []
    real = logfiles.datasync

    def slow_sync(fd: int) -> None:
        seen.append(logs_open(layout))
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(logfiles, "datasync", slow_sync)
    monkeypatch.setattr(wal, "datasync", slow_sync)  # logs synced by path, and the WAL
    segments = SegmentFile(layout, 4096, 30.0) if durability == "fsync" else None
    writer = LogWriter(
        layout, durability, MAX_OPEN, 0.01, 0.0, reports.on_written, reports.on_failed, segments
    )
    writer.start()
    for seq in (1, 2, 3):
        await asyncio.gather(*(writer.submit(f"s{i}", batch(seq)) for i in range(SESSIONS)))
        await writer.flush()
        assert len(writer._files.open_logs) <= MAX_OPEN  # between commits
        seen.append(logs_open(layout))
        await asyncio.sleep(0.02)  # a background round over what was trimmed
    await writer.close()
    assert len(seen) > SESSIONS
    assert max(seen) <= 3 * MAX_OPEN
    for i in range(SESSIONS):
        assert len(layout.log(f"s{i}").read_bytes().splitlines()) == 3
