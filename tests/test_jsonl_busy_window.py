"""The JSONL writer's busy window (persistence/jsonl/starts.py, ``busy_window``): with
``fsync``, an append queued while a commit's sync is in flight waits, after that
commit's answer, until the busy window since its start has passed, and what comes
meanwhile joins it: one sync for both. A lone append (nothing in flight) does not
wait. Counted (the writer's group commits), not timed: the window is made far longer
than a commit takes, so that without it the append behind would be committed at the
first commit's answer and the one after it in a commit of its own. Both ways a commit
starts: outside the writer's task (the sync helper asked from loop callbacks; the
helper held by SIGSTOP keeps the first commit in flight) and in that task (no helper:
the sync on its I/O thread)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence.jsonl.config import BUSY_WINDOW
from bamboo_session.persistence.jsonl.wal import SegmentFile
from bamboo_session.persistence.jsonl.writer import LogWriter
from tests.test_jsonl_outside_commits import asked, stopped
from tests.test_jsonl_writer import Reports, batch, made_layout
from tests.test_jsonl_writer_cancelled import LOOPS, answered, run, turns, until

WINDOW = 1.0  # far longer than a commit takes, on a busy disk too


def writer_for(tmp_path: Path, reports: Reports, sync_helper: bool) -> LogWriter:
    layout = made_layout(tmp_path)
    segments = SegmentFile(layout, 1 << 20, 30.0)
    return LogWriter(
        layout, "fsync", 256, 1.0, 0.0, reports.on_written, reports.on_failed, segments,
        sync_helper=sync_helper, busy_window=WINDOW,
    )  # fmt: skip


async def warmed(writer: LogWriter) -> int:
    """The logs open, the helper up, the segment started; then quiet past the window.
    The writer's count of commits by then."""
    writer.start()
    await asyncio.gather(*(writer.submit(s, batch(1)) for s in ("s0", "s1", "s2")))
    await asyncio.sleep(WINDOW * 1.2)
    return writer.batches


@pytest.mark.parametrize("loop", LOOPS)
def test_an_append_behind_a_sync_in_flight_waits_for_the_busy_window_outside_the_task(
    loop: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        reports = Reports()
        writer = writer_for(tmp_path, reports, sync_helper=True)
        batches = await warmed(writer)
        syncer = writer._syncer
        assert syncer is not None
        with stopped(syncer.pid):
            lone = writer.submit("s0", batch(2))  # nothing in flight: begun at once
            await until(lambda: asked(syncer))
            behind = writer.submit("s1", batch(2))  # while the lone commit's sync is asked
            await turns()
            assert not lone.done()
        await answered(lone)
        assert not behind.done()
        joining = writer.submit("s2", batch(2))
        await answered(behind)
        assert joining.done()  # it joined the commit that waited for the window
        assert writer.batches - batches == 2
        await writer.close()
        assert [w[0] for w in reports.written[-3:]] == ["s0", "s1", "s2"]

    run(loop, scenario)


async def under_way(writer: LogWriter) -> None:
    """Until the task took the queue as a commit. Polled at every turn: its sync, on
    the I/O thread, answers a turn later at the soonest, so it is seen under way."""
    for _ in range(1_000_000):
        if writer._in_flight:
            return
        await asyncio.sleep(0)
    raise AssertionError("never taken")


@pytest.mark.parametrize("loop", LOOPS)
def test_an_append_behind_a_commit_under_way_waits_for_the_busy_window_in_the_task(
    loop: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        reports = Reports()
        writer = writer_for(tmp_path, reports, sync_helper=False)
        batches = await warmed(writer)
        lone = writer.submit("s0", batch(2))
        await under_way(writer)
        behind = writer.submit("s1", batch(2))
        assert not lone.done()
        await answered(lone)
        assert not behind.done()
        joining = writer.submit("s2", batch(2))
        await answered(behind)
        assert joining.done()
        assert writer.batches - batches == 2
        await writer.close()

    run(loop, scenario)


def test_the_busy_window_is_a_couple_of_milliseconds() -> None:
    """Its bound on what an append behind a sync waits for (the p99 goal is 10 ms)."""
    assert 0 < BUSY_WINDOW <= 0.002
