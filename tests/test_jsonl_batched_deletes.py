"""The JSONL store deletes a cleanup round's expired sessions in batches, one sync of
each directory per batch (persistence/jsonl/deletes.py), on real files: a round syncs
the sessions directory a few times, not once per session; a kill -9 at each step of a
batch leaves every session whole or gone once the store is opened again (never its
metadata without its log, nor a listed session whose events are gone), the live
session with every event it acknowledged, and no renamed session back."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.listing import SessionFilter
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.forks import ForkedChild

CHILD = Path(__file__).with_name("cleanup_kill_child.py")
EXPIRED = 300  # as the child makes


async def test_a_round_syncs_the_sessions_directory_once_per_batch_not_per_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "store", durability="fsync")
    async with await JsonlStorage.open(config) as storage:
        sessions = storage.layout.sessions

        async def one(session_id: str) -> None:
            await storage.create_session(Session.new(session_id, user_id="gone"))
            await storage.append_event(session_id, AgentEvent.token("a"))
            await storage.update_session_state(session_id, SessionState.EXPIRED)

        await asyncio.gather(*(one(f"gone-{i:03d}") for i in range(EXPIRED)))
        await storage.create_session(Session.new("live", user_id="here"))
        real_fsync, synced = os.fsync, []

        def fsync(fd: int) -> None:  # the real sync, counted for the sessions directory
            if os.readlink(f"/proc/self/fd/{fd}") == str(sessions):
                synced.append(fd)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        assert await storage.cleanup_expired_sessions() == EXPIRED
        monkeypatch.undo()
        # One per batch: the deletes under way together (the first batch may hold one).
        assert len(synced) <= 10, len(synced)  # 300 before, one per session
        assert (await storage.list_sessions(SessionFilter(user_id="gone"))).total == 0
        assert sorted(p.name for p in sessions.iterdir()) == ["live.json"]
    async with await JsonlStorage.open(config) as storage:
        assert (await storage.list_sessions(SessionFilter(user_id="gone"))).total == 0
        assert await storage.get_metadata("live") is not None


@pytest.mark.parametrize("point", ["renamed", "files", "tombstones", "second"])
def test_a_kill_at_each_step_of_a_batch_leaves_each_session_whole_or_gone(
    point: str, tmp_path: Path
) -> None:
    base = tmp_path / "store"
    child = ForkedChild([str(CHILD), str(base), point])
    out, err = child.communicate(timeout=120)
    assert child.returncode == -9, err.decode()[-3000:]
    lines = out.decode().splitlines()
    assert lines[0] == "ready" and lines[1].startswith("renamed"), lines
    renamed = set(lines[1].split()[1:])
    assert renamed, "the kill came before any rename"
    asyncio.run(_check_whole_or_gone(base, renamed))


async def _check_whole_or_gone(base: Path, renamed: set[str]) -> None:
    config = JsonlStorageConfig(base, durability="fsync")
    async with await JsonlStorage.open(config) as storage:
        live = await storage.read_events("live")
        assert [e.event for e in live] == [AgentEvent.token(f"live{i}") for i in range(3)]
        listing = await storage.list_sessions(SessionFilter(user_id="gone", limit=1000))
        listed = {meta.id for meta in listing.sessions}
        for i in range(EXPIRED):
            session_id = f"gone-{i:03d}"
            meta = await storage.get_metadata(session_id)
            log = storage.layout.log(session_id)
            if session_id in renamed:  # its delete took effect: the open finished it
                assert meta is None and not log.exists(), session_id
            if meta is None:
                assert session_id not in listed and not log.exists(), session_id
                continue
            assert session_id in listed
            events = await storage.read_events(session_id)
            assert [e.event for e in events] == [AgentEvent.token("a"), AgentEvent.token("b")]
        assert not list(storage.layout.sessions.glob("*.deleted"))
