"""A checkpoint file that names another session than its file name (copied or renamed
by hand, or an old-format file, which has no CRC, damaged into valid JSON) is not that
session's: it is kept aside as damaged and the session is read from its own log, under
its own id. Taken as it was, the index listed the other id instead, whose reads
failed, even an id no call accepts (``../../escaped``). Found by reading the recovery
while writing tests/fuzz/fuzz_jsonl.py."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.base import SessionFilter
from bamboo_session.protocol.models import AgentEvent, Message, Session


async def store_with(tmp_path: Path, *ids: str) -> JsonlStorageConfig:
    """A store closed cleanly with these sessions, one message each, and no snapshot."""
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        for session_id in ids:
            await storage.create_session(Session.new(session_id, user_id="u"))
            await storage.append_event(session_id, AgentEvent.message(Message.user("m")))
    (tmp_path / "data/index/snapshot.msgpack").unlink()
    return config


async def check_s_is_read_from_its_log(config: JsonlStorageConfig, others: set[str]) -> None:
    async with await JsonlStorage.open(config) as storage:
        listed = {m.id for m in (await storage.list_sessions(SessionFilter())).sessions}
        assert listed == {"s", *others}
        assert [e.seq for e in await storage.read_events("s")] == [1]
        assert (await storage.append_event("s", AgentEvent.token("next"))).seq == 2
        kept = await storage.damaged_files()
        assert [path.name.partition(".damaged-")[0] for path in kept] == ["s.json"]


@pytest.mark.parametrize("named", ["other", "../../escaped"])
async def test_an_old_format_checkpoint_of_another_id_is_damage(tmp_path: Path, named: str) -> None:
    config = await store_with(tmp_path, "s")
    async with await JsonlStorage.open(config) as storage:
        metadata = await storage.get_metadata("s")
    (tmp_path / "data/index/snapshot.msgpack").unlink()
    assert metadata is not None
    metadata.id = named
    legacy = {"metadata": msgspec.to_builtins(metadata), "last_seq": 1, "log_offset": 0}
    (tmp_path / "data/sessions/s.json").write_bytes(msgspec.json.encode(legacy))
    await check_s_is_read_from_its_log(config, set())


async def test_a_checkpoint_copied_from_another_session_is_damage(tmp_path: Path) -> None:
    config = await store_with(tmp_path, "s", "t")
    sessions = tmp_path / "data/sessions"
    (sessions / "s.json").write_bytes((sessions / "t.json").read_bytes())
    await check_s_is_read_from_its_log(config, {"t"})
