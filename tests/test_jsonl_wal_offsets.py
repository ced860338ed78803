"""A WAL record's ``seq`` and ``off`` are outside its CRC (which covers its lines): a
record whose offset is damaged (a flipped digit, a mangled ``off`` key read as 0) must
not cut the log's synced lines. Replay cut the log where the record said its first line
begins, kept the lines there aside as damage, and wrote the record's lines in their
place: a log starting at seq 4, every read of it failing (``BrokenLine``), and the
acknowledged seqs 1..3 gone from it. Found by tests/fuzz/fuzz_jsonl.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import wal
from bamboo_session.protocol.models import AgentEvent, Session


async def six_tokens(tmp_path: Path) -> tuple[JsonlStorageConfig, bytes, list[bytes]]:
    """A store with session ``s`` of seqs 1..6, and its log's bytes and lines."""
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s", user_id="u"))
        for n in range(6):
            await storage.append_event("s", AgentEvent.token(f"t{n}"))
    data = (tmp_path / "data/events/s.jsonl").read_bytes()
    return config, data, data.splitlines(keepends=True)


async def crash_image(tmp_path: Path, wrong: str | None) -> JsonlStorageConfig:
    """Session ``s`` with seqs 1..6, its log cut after seq 3 (where the crash left it),
    and a WAL segment whose record of seqs 4..6 says they start where ``wrong`` says
    (None: where they do)."""
    config, data, lines = await six_tokens(tmp_path)
    log = tmp_path / "data/events/s.jsonl"
    half = len(b"".join(lines[:3]))
    offsets = {None: half, "zero": 0, "mid-line": half - 5, "seq 2's start": len(lines[0])}
    (tmp_path / "data/wal").mkdir(exist_ok=True)
    segment = tmp_path / "data/wal/0000000000000001.wal"
    segment.write_bytes(wal.encode_lines("s", 4, offsets[wrong], data[half:]))
    os.truncate(log, half)
    (tmp_path / "data/index/snapshot.msgpack").unlink()
    return config


@pytest.mark.parametrize("wrong", [None, "zero", "mid-line", "seq 2's start"])
async def test_a_damaged_record_offset_never_cuts_synced_lines(
    tmp_path: Path, wrong: str | None
) -> None:
    config = await crash_image(tmp_path, wrong)
    async with await JsonlStorage.open(config) as storage:
        assert [e.seq for e in await storage.read_events("s")] == [1, 2, 3, 4, 5, 6]
        tokens = [e.event for e in await storage.read_events("s", 3)]
        assert tokens == [AgentEvent.token(f"t{n}") for n in (3, 4, 5)]
        assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 7
        logs_kept = [p for p in await storage.damaged_files() if p.parent.name == "events"]
    assert logs_kept == []


async def seq_damaged_image(tmp_path: Path, record_seq: int, log_ends: str) -> JsonlStorageConfig:
    """Session ``s`` with seqs 1..6 and a WAL segment whose record of seqs 4..6 has the
    right offset but says it starts at ``record_seq``; the log holds every line (a kill
    -9), or was cut by a power cut in the middle of seq 5's line, or right after seq 3."""
    config, data, lines = await six_tokens(tmp_path)
    log = tmp_path / "data/events/s.jsonl"
    half = len(b"".join(lines[:3]))
    (tmp_path / "data/wal").mkdir(exist_ok=True)
    segment = tmp_path / "data/wal/0000000000000001.wal"
    segment.write_bytes(wal.encode_lines("s", record_seq, half, data[half:]))
    cut = {"whole": len(data), "in seq 5": len(b"".join(lines[:4])) + 5, "after seq 3": half}
    os.truncate(log, cut[log_ends])
    (tmp_path / "data/index/snapshot.msgpack").unlink()
    return config


@pytest.mark.parametrize("record_seq", [2, 3, 5, 40])
@pytest.mark.parametrize("log_ends", ["whole", "in seq 5", "after seq 3"])
async def test_a_damaged_record_seq_neither_loses_nor_repeats_a_line(
    tmp_path: Path, record_seq: int, log_ends: str
) -> None:
    # The record's lines are under its CRC, and each holds its seq: replay took the
    # record's own seq field instead, outside the CRC. With a seq too low, the log's
    # lines past the record's supposed last seq were cut as an unacknowledged tail:
    # acknowledged seqs 5 and 6 lost. With one too high, seqs 4..6 appended again
    # after a log that holds them, or a new epoch for a log that lacks nothing.
    config = await seq_damaged_image(tmp_path, record_seq, log_ends)
    async with await JsonlStorage.open(config) as storage:
        assert [e.seq for e in await storage.read_events("s")] == [1, 2, 3, 4, 5, 6]
        tokens = [e.event for e in await storage.read_events("s", 3)]
        assert tokens == [AgentEvent.token(f"t{n}") for n in (3, 4, 5)]
        assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 7
        kept = {p.parent.name for p in await storage.damaged_files()}
    assert "wal" in kept  # a damaged WAL is kept aside for an operator
