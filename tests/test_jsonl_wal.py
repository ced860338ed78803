"""The shared WAL of ``fsync`` mode (persistence/wal.py): one sync per group commit,
segments rotated by size and age, and every acknowledged event comes back from it when a
session log lost its unsynced tail; at open, lines of a batch the WAL never got are
cut, a deleted session is not resurrected, and a delete it recorded is finished.

Crash states are made two ways: by SIGKILLing a child that appends (segments remain,
as after any crash), or by hand: the segments are copied aside while the storage is
open, then put back after a clean close (which deletes them), with the snapshot removed.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import wal
from bamboo_session.protocol.log_lines import decode_stored_event
from bamboo_session.protocol.models import AgentEvent, Message, Session
from tests.jsonl_support import crash_with_segments, save_segments, segments, wal_records
from tests.test_jsonl_crash import Acked, run_and_kill, verify


def log_lines(config: JsonlStorageConfig, session_id: str) -> list[bytes]:
    return (config.layout.events / f"{session_id}.jsonl").read_bytes().splitlines(keepends=True)


async def test_one_sync_per_batch_whatever_the_number_of_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path, sync_helper=False)
    syncs: list[int] = []
    real = wal.datasync
    monkeypatch.setattr(wal, "datasync", lambda fd: (syncs.append(fd), real(fd))[1])
    async with await JsonlStorage.open(config) as storage:
        ids = [f"s{i}" for i in range(50)]
        for session_id in [*ids, "first"]:
            await storage.create_session(Session.new(session_id))
        # The segment's first append starts it and allocates room ahead: a sync more.
        await storage.append_event("first", AgentEvent.token("first"))
        syncs.clear()
        before = storage._writer.batches
        stored = await asyncio.gather(
            *(storage.append_event(sid, AgentEvent.token(sid)) for sid in ids)
        )
        assert [event.seq for event in stored] == [1] * 50
        batches = storage._writer.batches - before
        assert batches < 50 and len(syncs) == batches  # one WAL sync per batch, no log sync
        assert len(segments(config)) == 1
    assert segments(config) == []  # a clean close syncs the logs and deletes the segments
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_segments == 0
        for session_id in ids:
            assert [e.seq for e in await storage.read_events(session_id)] == [1]


async def test_a_log_that_lost_its_tail_is_restored_from_the_wal(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path / "data", checkpoint_every=3)
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.create_session(Session.new("t"))
        for i in range(10):
            await storage.append_event("s", AgentEvent.token(f"e{i}"))
            if i % 3 == 0:
                await storage.append_message("t", Message.user(f"m{i}"))
        await storage._checkpoints.write("s")  # ahead of what survives below
        save_segments(config, aside)
    crash_with_segments(config, aside)
    lines = log_lines(config, "s")
    # The last 4 lines never reached the disk, and half of one did.
    (config.layout.events / "s.jsonl").write_bytes(b"".join(lines[:6]) + lines[6][:20])
    (config.layout.events / "t.jsonl").write_bytes(b"")
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None
        assert storage.recovery.wal_events_replayed == 4 + 4
        events = await storage.read_events("s")
        assert [e.seq for e in events] == list(range(1, 11))
        assert [e.event for e in events] == [AgentEvent.token(f"e{i}") for i in range(10)]
        history = await storage.get_session_history("t")
        assert [m.content for m in history] == ["m0", "m3", "m6", "m9"]
        assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 11
    assert segments(config) == []
    assert log_lines(config, "s")[:10] == lines


async def test_a_deleted_session_is_not_resurrected_by_replay(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("gone", "again", "kept"):
            await storage.create_session(Session.new(session_id))
            for i in range(5):
                await storage.append_event(session_id, AgentEvent.token(f"old{i}"))
        await storage.delete_session("gone")
        await storage.delete_session("again")
        # A new session under a deleted id: the old one's records must not flow into it
        # (even before it has records of its own that would supersede them).
        await storage.create_session(Session.new("again"))
        save_segments(config, aside)
    crash_with_segments(config, aside)
    (config.layout.events / "kept.jsonl").write_bytes(b"")
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("gone") is None
        assert not (config.layout.events / "gone.jsonl").exists()
        assert await storage.read_events("again") == []
        assert (await storage.append_event("again", AgentEvent.token("new0"))).seq == 1
        assert len(await storage.read_events("kept")) == 5


async def test_segments_are_rotated_and_removed(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_bytes=2000)
    async with await JsonlStorage.open(config) as storage:
        ids = [f"r{i}" for i in range(8)]
        for session_id in ids:
            await storage.create_session(Session.new(session_id))
        numbers: set[int] = set()
        for _round in range(30):
            await asyncio.gather(
                *(storage.append_event(sid, AgentEvent.token("x" * 100)) for sid in ids)
            )
            numbers.update(number for number, _path in config.layout.segments())
            await asyncio.sleep(0)
        await storage._writer.retirement.settled()
        assert len(numbers) > 5, "the segments never rotated"
        assert len(segments(config)) <= 2  # the old ones were retired
    assert segments(config) == []
    async with await JsonlStorage.open(config) as storage:
        for session_id in ids:
            assert await storage.last_seq(session_id) == 30


async def test_segments_rotate_by_age(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_age=0.05)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("1"))
        first = segments(config)
        await asyncio.sleep(0.1)
        await storage.append_event("a", AgentEvent.token("2"))
        await storage._writer.retirement.settled()
        assert segments(config) != first and len(segments(config)) == 1


@pytest.mark.parametrize("after", [b"", bytes(4096)], ids=["at-the-end", "zeros-after"])
async def test_a_torn_last_wal_record_is_ignored(tmp_path: Path, after: bytes) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        for i in range(3):
            await storage.append_event("s", AgentEvent.token(f"e{i}"))
        save_segments(config, aside)
    crash_with_segments(config, aside)
    segment = segments(config)[0]
    data = wal_records(segment)
    # The last record (seq 3) torn, as a crash leaves it: never acked; the file ends
    # there, or the room allocated ahead follows.
    segment.write_bytes(data[:-7] + after)
    (config.layout.events / "s.jsonl").write_bytes(b"".join(log_lines(config, "s")[:1]))
    async with await JsonlStorage.open(config) as storage:
        assert [e.seq for e in await storage.read_events("s")] == [1, 2]


class _Late(random.Random):
    """Kills the child late enough that it appended for a while: a second after its
    first acknowledgement (one run, far short of a segment's age or size, so no segment
    was retired: every acknowledged line of every log is in the segments it left)."""

    def choice(self, seq: Any) -> Any:
        return 1.0


def wal_held_seqs(config: JsonlStorageConfig) -> dict[str, set[int]]:
    """The seqs each session's whole records in the segments hold: what replay can
    restore. A record the kill cut short (no newline, or zeros) was never acknowledged."""
    held: dict[str, set[int]] = {}
    for path in segments(config):
        for line in wal_records(path).split(b"\n")[:-1]:
            try:
                record = wal.decode_record(line)
            except msgspec.DecodeError:
                continue
            if record.of_lines:
                seqs = range(record.seq, record.seq + len(record.lines))
                held.setdefault(record.sid, set()).update(seqs)
    return held


def line_seq(line: bytes) -> int | None:
    """The seq of a log line; None for a line the kill tore."""
    try:
        return decode_stored_event(line).seq
    except msgspec.DecodeError:
        return None


def test_sigkill_then_lost_log_tails_every_acknowledged_event_comes_back(
    tmp_path: Path,
) -> None:
    """The child appends through the WAL and is killed; then each log loses its last
    lines (and keeps a torn half line), as if their pages never reached the disk.
    Only lines the segments still cover can be lost so: a retired segment's were synced.
    The kill may have come between a batch's log write and its WAL record: those last
    lines were never acknowledged, and are not restored (replay cuts them)."""
    base = tmp_path / "data"
    acked = Acked()
    for line in run_and_kill(base, seed=7, rng=_Late()):
        acked.add(line)
    assert len(acked.events) == 3, "the child acknowledged too little to test anything"
    config = JsonlStorageConfig(base)
    assert segments(config), "the killed child left no WAL segment"
    held = wal_held_seqs(config)
    restorable = 0
    for log in (base / "events").glob("*.jsonl"):
        kept = log.read_bytes().splitlines(keepends=True)
        seqs = [line_seq(line) for line in kept]
        first_held = min(held.get(log.stem, {len(kept) + 1}))
        covered = len(kept) - next(
            (i for i, seq in enumerate(seqs) if seq is not None and seq >= first_held), len(kept)
        )
        drop = min(len(kept) // 2, 6, covered)
        if drop:
            log.write_bytes(b"".join(kept[:-drop]) + kept[-drop][: len(kept[-drop]) // 2])
            restorable += sum(seq in held[log.stem] for seq in seqs[-drop:])
    assert restorable, "nothing the WAL holds was cut"

    async def reopen() -> None:
        async with await JsonlStorage.open(config) as storage:
            assert storage.recovery is not None
            assert storage.recovery.wal_events_replayed == restorable
            for log in (base / "events").glob("*.jsonl"):
                seqs = [decode_stored_event(x).seq for x in log.read_bytes().splitlines()]
                assert seqs == list(range(1, len(seqs) + 1))

    asyncio.run(reopen())
    asyncio.run(verify(base, acked))


async def test_replay_keeps_the_segments_when_a_log_lost_what_they_no_longer_cover(
    tmp_path: Path,
) -> None:
    config = JsonlStorageConfig(tmp_path / "data").with_wal(segment_bytes=600)
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        for i in range(20):
            await storage.append_event("a", AgentEvent.token(str(i)))
        await storage._writer.retirement.settled()
        save_segments(config, aside)  # the newest segments only: the old ones retired
    crash_with_segments(config, aside)
    log = config.layout.events / "a.jsonl"
    log.write_bytes(b"".join(log_lines(config, "a")[:2]))  # lost below the WAL's reach
    async with await JsonlStorage.open(config) as storage:
        assert await storage.damaged_files(), "the evidence was deleted"
        restored = [e.seq for e in await storage.read_events("a")]
        after = await storage.append_event("a", AgentEvent.token("after"))
    # Kept aside, not replayed again: the next open keeps what was appended since.
    assert segments(config) == []
    async with await JsonlStorage.open(config) as storage:
        assert [e.seq for e in await storage.read_events("a")] == [*restored, after.seq]


async def test_log_lines_of_a_batch_the_wal_never_got_are_cut_at_open(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        for i in range(3):
            await storage.append_event("a", AgentEvent.token(str(i)))
        save_segments(config, aside)
    crash_with_segments(config, aside)
    # The crash came after a batch reached the log but before its WAL record did.
    lines = log_lines(config, "a")
    unacked = lines[-1].replace(b'"seq":3', b'"seq":4').replace(b'"2"', b'"unacked"')
    with (config.layout.events / "a.jsonl").open("ab") as log:
        log.write(unacked)
    async with await JsonlStorage.open(config) as storage:
        assert [e.event for e in await storage.read_events("a")] == [
            AgentEvent.token(str(i)) for i in range(3)
        ]
        assert (await storage.append_event("a", AgentEvent.token("next"))).seq == 4
        # An ordinary crash, not damage: nothing is kept aside.
        assert storage.recovery is not None and storage.recovery.damaged == 0
        assert await storage.damaged_files() == []


async def test_a_delete_the_wal_recorded_but_that_did_not_finish_is_finished_at_open(
    tmp_path: Path,
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    aside = tmp_path / "aside"
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("gone", "kept"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("x"))
        gone = await storage.get_metadata("gone")
        assert gone is not None
        # The crash comes after the deletion records are synced, before the tombstones:
        # "gone" is the deleted session itself; "kept" was re-created since (another
        # epoch), so its record is about an older session of the same id.
        await storage._writer.forget("gone", gone.epoch)
        await storage._writer.forget("kept", "an-older-epoch")
        save_segments(config, aside)
    crash_with_segments(config, aside)
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("gone") is None
        assert not (config.layout.events / "gone.jsonl").exists()
        assert [e.event for e in await storage.read_events("kept")] == [AgentEvent.token("x")]
    assert segments(config) == []
