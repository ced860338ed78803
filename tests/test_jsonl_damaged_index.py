"""A message index (events/<id>.idx) damaged on disk: an entry whose offset or length
is far past the log is stale, read as such (the index rebuilt from the log), never an
OverflowError out of a read nor a buffer as large as the length it claims. Found by
tests/fuzz/fuzz_jsonl.py."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.jsonl import message_index
from bamboo_session.protocol.models import AgentEvent, Message, Session


async def damaged_store(tmp_path: Path, offset: int, length: int) -> JsonlStorageConfig:
    """A store whose session ``s`` has three messages, its index's last entry set to
    ``offset`` and ``length`` (its seq kept), and no snapshot to answer for it."""
    config = JsonlStorageConfig(tmp_path / "data")
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("s", user_id="u"))
    for n in range(3):
        await storage.append_event("s", AgentEvent.message(Message.user(f"m{n}")))
    await storage.close()
    index = tmp_path / "data/events/s.idx"
    data = bytearray(index.read_bytes())
    last = len(data) - message_index.ENTRY.size
    seq, _, _ = message_index.ENTRY.unpack_from(data, last)
    message_index.ENTRY.pack_into(data, last, seq, offset, length)
    index.write_bytes(bytes(data))
    (tmp_path / "data/index/snapshot.msgpack").unlink(missing_ok=True)
    return config


@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (2**64 - 1, 10),
        (2**63, 10),
        (0, 2**32 - 1),
        (2**40, 2**32 - 1),
        # Below 2^63, but a read of the line there passes it: the kernel refused the
        # pread (EINVAL), and every history read failed instead of finding it stale.
        (2**63 - 5, 10),
        (2**63 - 1, 0),
        (2**63 - 2**19, 2**32 - 1),
    ],
)
async def test_a_damaged_index_entry_is_stale_not_a_crash(
    tmp_path: Path, offset: int, length: int
) -> None:
    config = await damaged_store(tmp_path, offset, length)
    tracemalloc.start()
    try:
        async with await JsonlStorage.open(config) as storage:
            page = await storage.get_history_page("s", 10)
            events = await storage.read_events("s")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [m.content for m in page.messages] == ["m0", "m1", "m2"]
    assert [e.seq for e in events] == [1, 2, 3]
    assert peak < 64 * 2**20, peak  # not the 4 GiB the entry claims
