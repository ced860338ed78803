"""A checkpoint file whose first slot lost its opening bytes (a flipped bit, a sector
read back as zeros) while its second slot stayed whole: the open takes the second
slot. The file was read as a slot file only when it began as the first slot begins,
so this one was taken for the old format, set aside as damaged, and the session
rebuilt from its log alone: its user, title and TTL were gone (it left its user's
listing), though the second slot held them intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.listing import SessionFilter
from bamboo_session.protocol.models import AgentEvent, Session


async def stored_session(tmp_path: Path) -> tuple[JsonlStorageConfig, Path]:
    """A closed store with session ``s`` (user, title, TTL) and three events; its
    config and the session's checkpoint file."""
    config = JsonlStorageConfig(tmp_path / "data")
    storage = await JsonlStorage.open(config)
    await storage.create_session(Session.new("s", user_id="u", title="plans", ttl=3600))
    for n in range(3):
        await storage.append_event("s", AgentEvent.token(f"t{n}"))
    await storage.close()
    return config, tmp_path / "data/sessions/s.json"


@pytest.mark.parametrize("damage", [b'{"gEn":"', b"\x00" * 8])
async def test_the_whole_second_slot_is_taken(tmp_path: Path, damage: bytes) -> None:
    config, path = await stored_session(tmp_path)
    data = path.read_bytes()
    assert data.startswith(b'{"gen":"')
    path.write_bytes(damage + data[len(damage) :])

    storage = await JsonlStorage.open(config)
    try:
        metadata = await storage.get_metadata("s")
        assert (metadata.user_id, metadata.title, metadata.ttl) == ("u", "plans", 3600)
        listed = await storage.list_sessions(SessionFilter(user_id="u"))
        assert [m.id for m in listed.sessions] == ["s"]
        assert await storage.last_seq("s") == 3
        assert await storage.damaged_files() == []
    finally:
        await storage.close()


async def test_a_file_cut_short_past_its_first_slot_reads_it(tmp_path: Path) -> None:
    """A checkpoint file that lost its end (cut by hand, or by a copy that ran out of
    room) keeps its first slot whole: its slots were taken to be half the file's size,
    so none was found and the session was rebuilt from its log, its user gone."""
    config, path = await stored_session(tmp_path)
    data = path.read_bytes()
    slot = len(data) // 2
    path.write_bytes(data[: slot + 100])

    storage = await JsonlStorage.open(config)
    try:
        metadata = await storage.get_metadata("s")
        assert (metadata.user_id, metadata.title, metadata.ttl) == ("u", "plans", 3600)
        assert await storage.last_seq("s") == 3
        assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 4
    finally:
        await storage.close()
    storage = await JsonlStorage.open(config)  # the file written whole again since
    try:
        assert (await storage.get_metadata("s")).user_id == "u"  # type: ignore[union-attr]
        assert await storage.last_seq("s") == 4
    finally:
        await storage.close()
    assert len(path.read_bytes()) == len(data)
