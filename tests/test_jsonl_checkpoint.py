"""Checkpoint files (persistence/jsonl/checkpoint.py): two slots written in place, so a
write cut short always leaves one whole checkpoint; periodic ones never sync; the file
holds metadata and a log position only, whatever the length of the history."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence.jsonl import JsonlStorage, JsonlStorageConfig, checkpoint
from bamboo_session.persistence.jsonl.checkpoint import (
    Checkpoint,
    CheckpointDamaged,
    Coverage,
    Found,
    LegacyCheckpoint,
)
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    Session,
    SessionMetadata,
    SessionState,
)
from tests.jsonl_support import saved

BASE = SessionMetadata(id="s", epoch="e1")


def state(seq: int, extra: dict[str, object] | None = None) -> Checkpoint:
    meta = msgspec.structs.replace(BASE, last_seq=seq, extra=dict(extra or {}))
    return Checkpoint(metadata=meta, log_offset=100 * seq, index=Coverage(seq, seq, 100 * seq))


def slots_of(path: Path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    half = len(data) // 2
    return data[:half], data[half:]


def read(path: Path) -> Found:
    found = checkpoint.read(path)
    assert isinstance(found, Found)
    return found


def test_a_new_file_holds_the_checkpoint_in_both_slots(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    slots, _stamp = checkpoint.create(path, state(0))
    first, second = slots_of(path)
    assert first == second and first.endswith(b"\n") and len(first) == slots.capacity
    assert slots.synced == 0 and slots.generation == 1
    assert read(path).checkpoint == state(0)


def test_updates_go_to_the_slot_that_is_not_synced(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    slots, _ = checkpoint.create(path, state(0))
    synced = slots_of(path)[0]
    for seq in (1, 2, 3):  # periodic: always the other slot; the synced one untouched
        slots, _ = checkpoint.update(path, state(seq), slots, durable=False)
        assert slots_of(path)[0] == synced
        assert read(path).checkpoint == state(seq)
    slots, _ = checkpoint.update(path, state(4), slots, durable=True)
    assert slots.synced == 1  # that slot is on disk now: the next ones go to the other
    durable = slots_of(path)[1]
    slots, _ = checkpoint.update(path, state(5), slots, durable=False)
    assert slots_of(path)[1] == durable
    assert read(path).checkpoint == state(5) and read(path).generation == 6


def test_a_write_cut_short_leaves_the_synced_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    slots, _ = checkpoint.create(path, state(0))
    slots, _ = checkpoint.update(path, state(7), slots, durable=True)
    slots, _ = checkpoint.update(path, state(8), slots, durable=False)
    data = bytearray(path.read_bytes())
    data[20:60] = b"\x00" * 40  # slot 0, half written when the power went
    path.write_bytes(bytes(data))
    assert read(path).checkpoint == state(7)
    data[slots.capacity + 100] ^= 0x01  # and slot 1 fails its CRC too
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match=str(path)):
        checkpoint.read(path)


def test_the_first_write_after_an_open_syncs_what_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.json"
    slots, _ = checkpoint.create(path, state(0))
    checkpoint.update(path, state(1), slots, durable=False)  # newest, maybe not on disk
    syncs: list[int] = []
    real = checkpoint.datasync
    monkeypatch.setattr(checkpoint, "datasync", lambda fd: (syncs.append(fd), real(fd))[1])
    after_open, _ = checkpoint.update(path, state(2), None, durable=False)
    assert len(syncs) == 1  # the file as found, before the other slot is overwritten
    assert after_open.synced == 1 and read(path).checkpoint == state(2)
    checkpoint.update(path, state(3), after_open, durable=False)
    assert len(syncs) == 1  # periodic writes never sync


def test_a_checkpoint_that_outgrows_its_slot_gets_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    slots, _ = checkpoint.create(path, state(0))
    grown, _ = checkpoint.update(path, state(1, {"x": "y" * 3000}), slots, durable=False)
    assert grown.capacity > slots.capacity and grown.synced == 0
    assert read(path).checkpoint == state(1, {"x": "y" * 3000})


def test_the_old_format_reads_as_a_legacy_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    old = LegacyCheckpoint(SessionMetadata(id="s"), [Message.user("hi")], 1, 90)
    path.write_bytes(msgspec.json.encode(old))
    assert checkpoint.read(path) == old
    slots, _ = checkpoint.update(path, state(2), None, durable=False)  # replaced whole
    assert read(path).checkpoint == state(2) and slots.synced == 0


async def test_a_checkpoint_does_not_grow_with_the_history(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path, durability="os").with_checkpointing(every=50)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.append_message("s", Message.user("x" * 200))
        await storage._checkpoints.write("s")
        size = config.layout.checkpoint("s").stat().st_size
        for _ in range(20):
            await storage.append_events(
                "s", [(AgentEvent.message(Message.user("x" * 200)), None)] * 100
            )
        await storage._checkpoints.write("s")
        assert saved(config, "s").metadata.message_count == 2001
        assert config.layout.checkpoint("s").stat().st_size == size


async def test_streaming_checkpoints_neither_sync_nor_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Periodic checkpoints while a session streams: in place, no sync, no new file."""
    config = JsonlStorageConfig(tmp_path).with_checkpointing(every=5, interval=0.01)
    syncs: list[int] = []
    real = checkpoint.datasync
    monkeypatch.setattr(checkpoint, "datasync", lambda fd: (syncs.append(fd), real(fd))[1])
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        inode = config.layout.checkpoint("s").stat().st_ino
        for i in range(60):
            await storage.append_message("s", Message.user(str(i)))
            if i % 20 == 0:
                await asyncio.sleep(0.02)  # the periodic task runs too
        await asyncio.sleep(0.05)
        assert saved(config, "s").metadata.last_seq >= 55
        assert config.layout.checkpoint("s").stat().st_ino == inode
        assert syncs == []
        await storage.update_session_state("s", SessionState.CLOSED)
        assert len(syncs) == 1  # a move to closed is durable when it returns


def test_stamps_name_the_inode_size_and_time(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    _slots, stamp = checkpoint.create(path, state(0))
    stat = os.stat(path)
    assert stamp == (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def test_a_slot_whose_generation_changed_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    slots, _ = checkpoint.create(path, state(0))
    slots, _ = checkpoint.update(path, state(1), slots, durable=True)  # slot 1, gen 2
    checkpoint.update(path, state(2), slots, durable=False)  # slot 0, gen 3
    data = bytearray(path.read_bytes())
    data[slots.capacity + 22] = ord("f")  # slot 1 now claims a far newer generation
    path.write_bytes(bytes(data))
    assert read(path).checkpoint == state(2)
