"""What a crash can leave of the WAL's last commit is no damage (persistence/jsonl/
wal_replay.py, wal_evidence.py): the commit cut short at any byte (a kill -9 amid its
write, the room ahead reading as zeros, or a segment without room), or a sector of it
never written back (a power cut, pages written out of order). The store opens quietly,
keeps nothing aside, and holds every event acknowledged before that commit at its seq.
A guard on r499's damage rules, which must not take a crash for damage."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import wal
from bamboo_session.protocol.models import AgentEvent, Session

Image = Callable[[Path], None]
SECTOR = 512


async def crash_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, int, int]:
    """A store as a kill -9 right after its last commit leaves it (copied while open),
    with sessions created, appended to together, one deleted and one created since;
    the last commit holds records of four sessions. Returns the image's segment and
    the byte range of the last commit in it."""
    written: list[tuple[Path, int, int]] = []
    write = wal.SegmentFile.write

    def noting(segment: wal.SegmentFile, data: bytes) -> int:
        before = write(segment, data)
        assert segment.current is not None
        written.append((segment.current.path, before, before + len(data)))
        return before

    monkeypatch.setattr(wal.SegmentFile, "write", noting)
    base = tmp_path / "live"
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        for session_id in "abcd":
            await storage.create_session(Session.new(session_id))

        async def appends(session_ids: str, round_: int) -> None:
            await asyncio.gather(
                *[storage.append_event(s, AgentEvent.token(f"{s}{round_}")) for s in session_ids]
            )

        for round_ in range(3):
            await appends("abcd", round_)
        await storage.delete_session("d")
        await storage.create_session(Session.new("n"))
        await appends("abn", 3)
        await appends("abcn", 4)
        path, start, end = written[-1]
        assert wal.decode_record(path.read_bytes()[start:end].split(b"\n")[3]).sid
        shutil.copytree(base, tmp_path / "image")
    return tmp_path / "image" / path.relative_to(base), start, end


ACKNOWLEDGED = {"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2, 3], "n": [1]}


def zeros_from(offset: int, end: int) -> Image:
    def made(segment: Path) -> None:
        with open(segment, "r+b") as file:
            file.seek(offset)
            file.write(bytes(end - offset))

    return made


def cut_at(offset: int) -> Image:
    def made(segment: Path) -> None:
        with open(segment, "r+b") as file:
            file.truncate(offset)

    return made


def images(segment: Path, start: int, end: int) -> list[tuple[str, Image]]:
    """Every byte where a record begins or ends (and next to it), every 29th byte
    between; every sector of the commit lost alone."""
    commit = segment.read_bytes()[start:end]
    edges = {start + i for i, byte in enumerate(commit) if byte == ord("\n")} | {start}
    offsets = sorted(
        {o for edge in edges for o in range(edge - 1, edge + 2) if start <= o <= end}
        | set(range(start, end, 29))
    )
    made = [(f"zeros from {o}", zeros_from(o, end)) for o in offsets]
    made += [(f"cut at {o}", cut_at(o)) for o in offsets]
    for sector in range(start // SECTOR * SECTOR, end, SECTOR):
        lost = (max(sector, start), min(sector + SECTOR, end))
        made.append((f"sector {lost} lost", zeros_from(*lost)))
    return made


async def test_what_a_crash_leaves_of_the_last_commit_is_no_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    segment, start, end = await crash_image(tmp_path, monkeypatch)
    image, work = segment.parents[1], tmp_path / "work"
    problems = []
    for name, make in images(segment, start, end):
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(image, work)
        make(work / segment.relative_to(image))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            async with await JsonlStorage.open(JsonlStorageConfig(work)) as storage:
                kept = await storage.damaged_files()
                stored = {s: [e.seq for e in await storage.read_events(s)] for s in ACKNOWLEDGED}
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        lost = {
            s: seqs
            for s, seqs in stored.items()
            if seqs[: len(ACKNOWLEDGED[s])] != ACKNOWLEDGED[s]
            or seqs != list(range(1, len(seqs) + 1))
        }
        if kept or errors or lost:
            problems.append((name, kept, errors[:1], lost))
    assert problems == [], problems[:5]
