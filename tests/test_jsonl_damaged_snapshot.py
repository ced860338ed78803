"""An index snapshot (index/snapshot.msgpack) damaged on disk while the files it names
stay as they were: the open sets it aside and reads the checkpoints, and the session is
whole. Its entries carry no check of their own before version 3, and one whose field
``last_seq`` was damaged was taken with a ``last_seq`` of 0: the session's six events
were out of reach, and the next append was acknowledged at seq 1 again, written after
seq 6. Found by tests/fuzz/fuzz_jsonl.py once its snapshot entries could match."""

from __future__ import annotations

from pathlib import Path

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import AgentEvent, Session


async def test_a_damaged_snapshot_entry_is_set_aside_and_the_checkpoint_read(
    tmp_path: Path,
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("s", user_id="u"))
    for n in range(6):
        await storage.append_event("s", AgentEvent.token(f"t{n}"))
    await storage.close()
    snapshot = tmp_path / "data/index/snapshot.msgpack"
    data = snapshot.read_bytes()
    # A flipped bit in a field's name: still a valid encoding, and the field then reads
    # as its default.
    assert data.count(b"last_seq") == 1
    snapshot.write_bytes(data.replace(b"last_seq", b"la3t_seq"))

    storage = await JsonlStorage.open(config)
    try:
        assert await storage.last_seq("s") == 6
        appended = await storage.append_event("s", AgentEvent.token("after"))
        assert appended.seq == 7
        assert [event.seq for event in await storage.read_events("s")] == list(range(1, 8))
    finally:
        await storage.close()
