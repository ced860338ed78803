"""The group-commit writer (persistence/jsonl/writer.py, logfiles.py) on its own: it
reports where each batch's lines start before acknowledging them, batches concurrent
appends, keeps descriptors bounded, fails only what failed, and syncs as its mode says."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.jsonl import logfiles
from bamboo_session.persistence.jsonl.batch import Batch, Group
from bamboo_session.persistence.jsonl.config import Durability
from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.persistence.jsonl.wal import SegmentFile
from bamboo_session.persistence.jsonl.writer import LogWriter
from bamboo_session.protocol.log_lines import decode_stored_event, encode_stored_event
from bamboo_session.protocol.models import AgentEvent, StoredEvent, utcnow


@dataclass
class Reports:
    written: list[tuple[str, list[tuple[int, int]], int]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def on_written(self, group: Group) -> None:
        offsets, offset = [], group.size_before
        for appended in group.batches:
            offsets.append((offset, appended.events[0].seq))
            offset += len(appended.data)
        self.written.append((group.session_id, offsets, group.new_size))

    def on_failed(self, session_id: str, error: OSError, uncut: int) -> None:
        self.failed.append(session_id)


def batch(*seqs: int) -> Batch:
    events = [StoredEvent(seq, utcnow(), AgentEvent.token(f"t{seq}")) for seq in seqs]
    return Batch(events, b"".join(encode_stored_event(e) + b"\n" for e in events))


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return made_layout(tmp_path)


def made_layout(base: Path) -> Layout:
    layout = Layout(base)
    for directory in layout.directories():
        directory.mkdir(parents=True)
    return layout


# How long a test waits for what must happen, however loaded the machine (a bound
# against hanging, not a measure: speed is measured in bench/).
DEADLINE = 60.0


async def started(
    layout: Layout, reports: Reports, durability: Durability = "fsync", max_open: int = 256,
    wal: bool = True, commit_window: float = 0.0, fsync_interval: float = 0.02,
) -> LogWriter:  # fmt: skip
    segments = SegmentFile(layout, 1 << 20, 30.0) if wal and durability == "fsync" else None
    writer = LogWriter(
        layout, durability, max_open, fsync_interval, commit_window, reports.on_written,
        reports.on_failed, segments,
    )  # fmt: skip
    writer.start()
    return writer


@pytest.fixture
async def reports() -> AsyncIterator[Reports]:
    yield Reports()


async def test_a_commit_window_gathers_appends_that_follow_a_commit_into_one_batch(
    layout: Layout, reports: Reports
) -> None:
    writer = await started(layout, reports, commit_window=0.5)
    await asyncio.sleep(0.01)  # the writer is idle
    appends = []
    for n in range(5):  # five sessions, one event each, arriving one after another
        appends.append(asyncio.ensure_future(writer.submit(f"s{n}", batch(n + 1))))
        await asyncio.sleep(0.01)
    await asyncio.gather(*appends)
    # The first is committed at once; the four that came within the window after it
    # share the next commit.
    assert writer.batches == 2
    await writer.close()


async def test_with_a_commit_window_appends_left_over_by_a_full_batch_do_not_wait_for_it(
    layout: Layout, reports: Reports
) -> None:
    """Appends to more sessions than a batch may open came before its commit started:
    those left for the next batch are not paced by the window (only appends that come
    within it after a commit started wait), else each batch's worth of sessions beyond
    the first waited a whole window more."""
    # A window ten times the test's deadline: paced, the appends left over would wait
    # it, and never be done in time, however fast or slow the disk (a bound of 2.5 s
    # on the three commits failed beside other tests' load).
    writer = await started(layout, reports, max_open=2, commit_window=10 * DEADLINE)
    appends = [writer.submit(f"s{n}", batch(1)) for n in range(5)]  # three batches
    await asyncio.wait_for(asyncio.gather(*appends), DEADLINE)
    assert writer.batches == 3
    await writer.close()


async def test_with_a_commit_window_a_lone_append_does_not_wait_for_it(
    layout: Layout, reports: Reports, tmp_path: Path
) -> None:
    """Told apart by what shares a commit, not by how long a commit takes (bounds on
    that, of 0.5 s then 1 s, failed beside other tests' disk and CPU load): an append
    that waits for the window is joined by what is submitted meanwhile; one committed
    at once is not."""
    loop = asyncio.get_running_loop()
    # A window far longer than a commit takes, even on a busy disk: an append that
    # comes within it after a commit started waits for the rest of it (after a commit
    # that took longer than the window, it would not: that is by design).
    writer = await started(layout, reports, commit_window=5.0)
    submitted = loop.time()
    lone = writer.submit("s0", batch(1))  # no commit before it
    await yield_to_the_writer()
    following = writer.submit("s1", batch(1))  # within the window of s0's commit
    await asyncio.wait_for(lone, DEADLINE)
    took = loop.time() - submitted
    assert not following.done()  # s0 was committed without waiting for the window
    joining = writer.submit("s2", batch(1))
    await asyncio.wait_for(following, DEADLINE)
    assert joining.done(), f"s1 did not wait for the window; s0's commit took {took:.2f} s"
    assert writer.batches == 2
    await writer.close()

    # Once the window after the last commit's start has passed, an append is alone
    # again. A short window will do: what is checked is that nothing waits for it.
    writer = await started(made_layout(tmp_path / "again"), reports, commit_window=0.2)
    await asyncio.wait_for(writer.submit("s0", batch(1)), DEADLINE)
    await asyncio.sleep(0.3)  # past the window of that commit (which started before)
    alone = writer.submit("s1", batch(1))
    await yield_to_the_writer()
    after = writer.submit("s2", batch(1))
    await asyncio.wait_for(alone, DEADLINE)
    assert not after.done()  # s1 was committed without waiting for the window
    await asyncio.wait_for(after, DEADLINE)
    assert writer.batches == 3
    await writer.close()


async def yield_to_the_writer() -> None:
    """Lets the writer's task, woken by a submit, take what is queued: it is ready to
    run before this task is, and takes its batch before its first await (unless it
    waits for the window); no time passes for it."""
    await asyncio.sleep(0)


async def test_without_a_commit_window_a_lone_append_is_written_at_once(
    layout: Layout, reports: Reports
) -> None:
    """Told apart by what shares a commit, not by how long one takes (a bound of 0.4 s
    an append failed beside other tests' load): an append that waited before its
    commit would be joined by what is submitted meanwhile."""
    writer = await started(layout, reports)
    for n in range(3):
        alone = writer.submit(f"a{n}", batch(1))
        await yield_to_the_writer()
        after = writer.submit(f"b{n}", batch(1))
        await asyncio.wait_for(alone, DEADLINE)
        assert not after.done()  # a{n} was committed without waiting for it
        await asyncio.wait_for(after, DEADLINE)
    assert writer.batches == 6
    await writer.close()


async def test_each_batch_is_reported_where_its_lines_start(
    layout: Layout, reports: Reports
) -> None:
    writer = await started(layout, reports)
    first, second = batch(1, 2), batch(3)
    await asyncio.gather(writer.submit("a", first), writer.submit("a", second))
    await writer.close()
    data = layout.log("a").read_bytes()
    offsets = [offset for _sid, written, _size in reports.written for offset, _seq in written]
    assert offsets == [0, len(first.data)]
    assert reports.written[-1][2] == len(data)
    assert [decode_stored_event(line).seq for line in data.splitlines()] == [1, 2, 3]


async def test_concurrent_appends_share_batches(layout: Layout, reports: Reports) -> None:
    writer = await started(layout, reports)
    futures = [writer.submit(f"s{i}", batch(1)) for i in range(40)]
    await asyncio.gather(*futures)
    assert writer.batches < 40  # the first batch took one; the rest queued behind it
    await writer.close()


async def test_a_failed_file_fails_its_appends_only(layout: Layout, reports: Reports) -> None:
    writer = await started(layout, reports)
    layout.log("bad").mkdir()  # opening it fails (EISDIR)
    good = writer.submit("good", batch(1))
    bad = writer.submit("bad", batch(1))
    behind = writer.submit("bad", batch(2))
    await good
    with pytest.raises(StorageError, match="nothing of this append was stored"):
        await bad
    with pytest.raises(StorageError):
        await behind  # queued behind the failed one: its seq no longer follows the log
    assert reports.failed == ["bad"]
    layout.log("bad").rmdir()
    await writer.submit("bad", batch(1))  # a new generation: works again
    await writer.close()


@pytest.mark.parametrize(("durability", "wal"), [("fsync", True), ("fsync", False), ("os", True)])
async def test_syncs_as_the_mode_says(
    layout: Layout,
    reports: Reports,
    monkeypatch: pytest.MonkeyPatch,
    durability: Durability,
    wal: bool,
) -> None:
    synced: list[int] = []
    real = logfiles.datasync
    monkeypatch.setattr(logfiles, "datasync", lambda fd: (synced.append(fd), real(fd))[1])
    # The background sync's first round a second away: acknowledged before it, even
    # on a busy machine (20 ms was once less than the writes took).
    writer = await started(layout, reports, durability=durability, wal=wal, fsync_interval=1.0)
    await asyncio.gather(*(writer.submit(f"s{i}", batch(1)) for i in range(5)))
    if durability == "os":
        assert synced == []  # acknowledged after the write
        for _ in range(300):  # the background sync follows
            await asyncio.sleep(0.01)
            if len(synced) == 5:
                break
        assert len(synced) == 5
    elif wal:
        assert synced == []  # the WAL segment is synced instead, once per batch
    else:
        assert len(synced) == 5  # every written log, before the acknowledgement
    await writer.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_close_during_a_background_sync_syncs_every_log_and_leaks_nothing(
    layout: Layout, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_sync, real_take = logfiles.datasync, logfiles.LogFiles.take_unsynced
    monkeypatch.setattr(logfiles, "datasync", lambda fd: (synced.append(fd), real_sync(fd))[1])

    def slow_take(files: logfiles.LogFiles) -> list[tuple[str, int]]:
        taken = real_take(files)
        time.sleep(0.2)  # close() comes while the descriptors are being handed out
        return taken

    monkeypatch.setattr(logfiles.LogFiles, "take_unsynced", slow_take)
    before = open_descriptors()
    writer = await started(layout, reports, durability="os")  # background sync: 0.02 s
    await asyncio.gather(*(writer.submit(f"s{i}", batch(1)) for i in range(3)))
    await asyncio.sleep(0.1)  # the round has taken them
    await writer.close()
    assert len(synced) == 3
    assert open_descriptors() == before


async def test_a_background_sync_out_of_descriptors_tries_again(
    layout: Layout, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_sync, real_dup = logfiles.datasync, os.dup
    monkeypatch.setattr(logfiles, "datasync", lambda fd: (synced.append(fd), real_sync(fd))[1])
    exhausted = [True]

    def dup(fd: int) -> int:
        if exhausted[0]:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(fd)

    monkeypatch.setattr(logfiles.os, "dup", dup)
    writer = await started(layout, reports, durability="os")
    await asyncio.gather(*(writer.submit(f"s{i}", batch(1)) for i in range(3)))
    await asyncio.sleep(0.1)  # a few rounds fail
    assert synced == []
    exhausted[0] = False
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(synced) == 3:
            break
    assert len(synced) == 3
    await writer.close()


async def test_close_writes_what_is_queued(layout: Layout, reports: Reports) -> None:
    writer = await started(layout, reports, durability="os")
    futures = [writer.submit("a", batch(seq)) for seq in range(1, 6)]
    await writer.close()
    await asyncio.gather(*futures)
    assert len(layout.log("a").read_bytes().splitlines()) == 5
    assert writer._files.open_logs == {}
    with pytest.raises(StorageError, match="closed"):
        writer.submit("a", batch(6))


@pytest.mark.parametrize("durability", ["fsync", "os"])
async def test_a_flush_or_a_deletion_after_close_is_refused(
    layout: Layout, reports: Reports, durability: Durability
) -> None:
    """Nothing takes the queue once the writer is closed: a flush, or a session's
    deletion (a delete still under way when its store closed), fails at once. (Its
    marker was queued all the same, and waited for ever.)"""
    writer = await started(layout, reports, durability=durability)
    await writer.submit("a", batch(1))
    await writer.close()
    with pytest.raises(StorageError, match="closed"):
        await asyncio.wait_for(writer.forget("a", "epoch"), DEADLINE)
    with pytest.raises(StorageError, match="closed"):
        await asyncio.wait_for(writer.flush(), DEADLINE)


async def test_os_mode_trims_unsynced_logs_without_syncing_in_the_appends_way(
    layout: Layout, reports: Reports, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A log trimmed before the background sync came to it is synced by path at the
    next round, on a sync thread: a sync on the writer's thread would hold the next
    batch (a serial fdatasync per trimmed log, 10x slower rounds over 200 sessions at
    85 open logs)."""
    on_writer: list[int] = []
    by_path: list[str] = []
    real_sync, real_sync_log = logfiles.datasync, logfiles.sync_log

    def datasync(fd: int) -> None:
        if threading.current_thread().name.startswith("bamboo-log-writer"):
            on_writer.append(fd)
        real_sync(fd)

    def sync_log(layout: Layout, session_id: str) -> None:
        by_path.append(session_id)
        real_sync_log(layout, session_id)

    monkeypatch.setattr(logfiles, "datasync", datasync)
    monkeypatch.setattr(logfiles, "sync_log", sync_log)
    # The first background round well after the three batches: one that came between
    # two of them (a busy machine) synced s0 through a dup while still open, and left
    # nothing of it to sync by path.
    writer = await started(layout, reports, durability="os", max_open=1, fsync_interval=0.5)
    for n in range(3):  # one session at a time: each batch trims the one before
        await writer.submit(f"s{n}", batch(1))
    await asyncio.sleep(1.2)  # two background rounds
    assert not on_writer
    assert sorted(by_path) == ["s0", "s1"]  # s2 is still open: synced through a dup
    await writer.close()
