"""Room allocated ahead of the WAL's records (persistence/jsonl/wal.py): a commit writes
into it and leaves the segment's size alone, replay ends cleanly where the records do
(the room reads as zeros), and a segment whose room cannot be allocated still takes
every record."""

from __future__ import annotations

import logging
import os
import resource
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import wal, wal_replay
from bamboo_session.protocol.models import AgentEvent, Session
from tests.jsonl_support import crash_with_segments, save_segments, segments, wal_records


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


Lines = dict[str, list[bytes]]


async def crash_image_with(
    tmp_path: Path, segment: Callable[[Lines], bytes | list[bytes]], t_events: int = 2
) -> JsonlStorageConfig:
    """A store of sessions ``s`` and ``t`` as a crash leaves it: checkpoints from before
    the appends, the logs as written (``s`` seqs 1 to 3, ``t`` 1 to ``t_events``), and
    the WAL segment (or segments 1, 2, ...) that ``segment`` makes of the logs' lines."""
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "checkpoints"
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("s", "t"):
            await storage.create_session(Session.new(session_id))
        shutil.copytree(config.layout.sessions, aside)
        for session_id, count in (("s", 3), ("t", t_events)):
            for i in range(count):
                await storage.append_event(session_id, AgentEvent.token(f"{session_id}{i}"))
    shutil.rmtree(config.layout.sessions)
    shutil.copytree(aside, config.layout.sessions)
    config.layout.snapshot.unlink()
    lines = {sid: config.layout.log(sid).read_bytes().splitlines(keepends=True) for sid in "st"}
    made = segment(lines)
    for number, data in enumerate([made] if isinstance(made, bytes) else made, 1):
        config.layout.segment(number).write_bytes(data + bytes(5000))
    return config


def record(lines: Lines, session_id: str, seq: int) -> bytes:
    """The WAL record of one log line, as the writer makes it."""
    offset = sum(len(line) for line in lines[session_id][: seq - 1])
    return wal.encode_lines(session_id, seq, offset, lines[session_id][seq - 1])


def holed(data: bytes) -> bytes:
    """``data`` with its first bytes never written, as a crash leaves a page."""
    return bytes(12) + data[12:]


async def seqs(storage: JsonlStorage, session_id: str) -> list[int]:
    return [e.seq for e in await storage.read_events(session_id)]


async def test_a_page_a_crash_left_unwritten_in_the_last_commit_is_ignored_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A power cut during a commit of several sessions' records can leave a page in the
    middle unwritten (zeros) and a later one written. Nothing of that commit was
    acknowledged: the holed record is ignored at info level and its log lines are cut,
    the whole record after it (another session's share) may stay."""

    def last_commit_holed(lines: Lines) -> bytes:
        synced = [record(lines, "s", 1), record(lines, "t", 1), record(lines, "s", 2)]
        return b"".join([*synced, holed(record(lines, "s", 3)), record(lines, "t", 2)])

    config = await crash_image_with(tmp_path, last_commit_holed)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2]
            assert await seqs(storage, "t") == [1, 2]
            assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert "zero bytes" in caplog.text
    assert segments(config) == []  # replayed, then discarded


async def test_zeros_amid_synced_records_are_damage_and_keep_every_acknowledged_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Zeros before a later commit's record of the same session are not a crash (only
    the last commit can be cut short, and it holds one record per session): a lost
    write or a bad sector. The logs' lines stay, an error says so, and the segments are
    kept as evidence."""

    def damaged(lines: Lines) -> bytes:
        return b"".join(
            [record(lines, "s", 1), holed(record(lines, "s", 2)), record(lines, "s", 3)]
        )

    config = await crash_image_with(tmp_path, damaged)
    with caplog.at_level(logging.INFO):
        async with await JsonlStorage.open(config) as storage:
            assert await seqs(storage, "s") == [1, 2, 3]
            assert await seqs(storage, "t") == [1, 2]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("lacks a record before seq 3" in message for message in errors), errors
    # Kept aside, not in the WAL: replayed again at the next open, its seq 3 would cut
    # every line appended after this one.
    assert segments(config) == []
    async with await JsonlStorage.open(config) as storage:
        [kept] = await storage.damaged_files()
        assert kept.parent == config.layout.wal
        await storage.append_event("s", AgentEvent.token("after"))
    async with await JsonlStorage.open(config) as storage:
        assert await seqs(storage, "s") == [1, 2, 3, 4]
        assert await storage.clear_damaged() == [kept]
    assert not kept.exists()
