"""Room allocated ahead of the WAL's records (persistence/jsonl/wal.py): a commit writes
into it and leaves the segment's size alone, replay ends cleanly where the records do
(the room reads as zeros), and a segment whose room cannot be allocated still takes
every record."""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import wal, wal_replay
from bamboo_session.protocol.models import AgentEvent, Session
from tests.test_jsonl_wal import crash_with_segments, save_segments, segments, wal_records


async def test_a_commit_writes_into_room_ahead_and_leaves_the_segment_size_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.append_event("s", AgentEvent.token("e0"))
        (segment,) = segments(config)
        size = segment.stat().st_size
        assert size >= len(wal_records(segment)) + wal.ROOM_AHEAD_BYTES
        for i in range(1, 30):
            await storage.append_event("s", AgentEvent.token(f"e{i}"))
        assert segment.stat().st_size == size  # no inode to write at each sync
        assert wal_records(segment).count(b"\n") == 30
        save_segments(config, aside)
    crash_with_segments(config, aside)
    (config.layout.events / "s.jsonl").write_bytes(b"")  # the log lost everything
    with caplog.at_level(logging.INFO, logger=wal_replay.__name__):
        report = wal_replay.replay(config.layout, {"s"})
    assert report.events_replayed == 30
    assert report.records_ignored == 0  # the zeros are the end, not a torn record
    assert "torn" not in caplog.text
    async with await JsonlStorage.open(config) as storage:
        events = await storage.read_events("s")
        assert [e.event for e in events] == [AgentEvent.token(f"e{i}") for i in range(30)]


async def test_a_large_batch_goes_into_room_allocated_ahead_too(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.append_event("s", AgentEvent.token("first"))
        big = [(AgentEvent.token("x" * 1000), None) for _ in range(wal.ROOM_AHEAD_BYTES // 900)]
        await storage.append_events("s", big)  # more than the room left
        (segment,) = segments(config)
        assert segment.stat().st_size >= len(wal_records(segment)) + wal.ROOM_AHEAD_BYTES


@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """A soft file size limit below the room allocated ahead: allocating it fails with
    EFBIG (Python ignores SIGXFSZ), as on a disk too full for it."""
    limit = wal.ROOM_AHEAD_BYTES // 4
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    if old[1] != resource.RLIM_INFINITY and old[1] < limit:
        pytest.skip("the hard file size limit is below the test's")
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old[1]))
    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)


async def test_records_are_appended_when_room_cannot_be_allocated_ahead(
    tmp_path: Path, file_size_limit: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    with caplog.at_level(logging.WARNING, logger=wal.__name__):
        async with await JsonlStorage.open(config) as storage:
            await storage.create_session(Session.new("s"))
            for i in range(40):
                await storage.append_event("s", AgentEvent.token(f"e{i}"))
            (segment,) = segments(config)
            assert segment.stat().st_size <= file_size_limit
            save_segments(config, aside)
    warnings = [r for r in caplog.records if "room ahead" in r.getMessage()]
    assert len(warnings) == 1  # tried once, not at every commit
    crash_with_segments(config, aside)
    (config.layout.events / "s.jsonl").write_bytes(b"")
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_events_replayed == 40
        assert [e.seq for e in await storage.read_events("s")] == list(range(1, 41))


def test_zeros_after_a_torn_record_leave_it_torn(tmp_path: Path) -> None:
    """A record cut short by a crash and followed by zeros is still ignored; the one
    before it replays."""
    config = JsonlStorageConfig(tmp_path / "data")
    config.layout.wal.mkdir(parents=True)
    config.layout.events.mkdir(parents=True)
    whole = wal.encode_lines("s", 1, 0, b'{"seq":1}\n')
    torn = wal.encode_lines("s", 2, 10, b'{"seq":2}\n')[:-9]
    config.layout.segment(1).write_bytes(whole + torn + bytes(5000))
    report = wal_replay.replay(config.layout, {"s"})
    assert report.records_ignored == 1
    assert (config.layout.events / "s.jsonl").read_bytes() == b'{"seq":1}\n'
    assert os.path.exists(config.layout.segment(1))  # discarded by open, not by replay


def test_a_commit_a_crash_left_with_unwritten_pages_ends_the_segment_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A power cut during a commit of several records can leave a page in the middle
    unwritten (zeros) and a later one written. Nothing from the hole on was synced or
    acknowledged: replay stops there, at info level, and cuts the log's lines of it."""
    config = JsonlStorageConfig(tmp_path / "data")
    config.layout.wal.mkdir(parents=True)
    config.layout.events.mkdir(parents=True)
    lines = [b'{"seq":%d}\n' % seq for seq in (1, 2, 3)]
    records = [wal.encode_lines("s", seq, 10 * (seq - 1), lines[seq - 1]) for seq in (1, 2, 3)]
    holed = bytes(12) + records[1][12:]  # the start of seq 2's record never written
    config.layout.segment(1).write_bytes(records[0] + holed + records[2] + bytes(5000))
    (config.layout.events / "s.jsonl").write_bytes(b"".join(lines))
    with caplog.at_level(logging.INFO, logger=wal_replay.__name__):
        report = wal_replay.replay(config.layout, {"s"})
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "left unwritten" in caplog.text
    assert report.records_ignored == 1
    assert (config.layout.events / "s.jsonl").read_bytes() == lines[0]
