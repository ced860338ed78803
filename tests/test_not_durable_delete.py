"""A delete that took effect but not durably (the JSONL store without its WAL, in
``fsync`` mode, whose sync of the renames the store's threads refused: its checkpoint
is its tombstone, which the next open finishes; ``DeletedNotDurably``) is told as a
delete, as a cleanup round counts it (tests/test_jsonl_refused_deletes.py): the
session's peers on a server are closed 4404 ``session deleted``, not 1011 ``session
not deleted`` (a resume would only find it missing), ``SessionManager.delete_session``
returns, and the store's log says it once; ``bamboo-session delete`` and ``cleanup``
count it and say on one line that it is deleted, not durably until the next open, with
status 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl.tasks import FileJobs
from bamboo_session.protocol.models import Session, SessionState
from bamboo_session.server import tools_store
from bamboo_session.server.cli import main
from tests.held_delete_support import EVENT_A, closed_with, embedded
from tests.support import attach, get, open_peer
from tests.test_cli_offline import tool
from tests.test_jsonl_refused_deletes import refuse_jobs_of

DELETED = {"type": "closed", "reason": "session deleted"}
NOT_DURABLY = "deleted, not durably until the next open"


def without_the_wal(path: Path) -> JsonlStorageConfig:
    """The one JSONL store whose delete can be done but not durable: nothing but its
    rename's directory sync would record it (no store URL turns the WAL off)."""
    return JsonlStorageConfig(path, durability="fsync").with_wal(enabled=False)


async def test_the_peers_of_a_session_deleted_not_durably_are_told_it_is_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = without_the_wal(tmp_path / "store")
    async with embedded(config) as server:
        assert server._manager is not None and isinstance(server.storage, JsonlStorage)
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            async with attach(server, session_id) as (viewer, _welcome):
                await agent.request(EVENT_A, "ack")
                refuse_jobs_of(server.storage, "settle_renames", monkeypatch)
                await server._manager.delete_session(session_id)  # no DeletedNotDurably
                for peer in (agent, viewer):
                    assert (await closed_with(peer, 4404))[-1] == DELETED
        told = [r.getMessage() for r in caplog.records if repr(session_id) in r.getMessage()]
        assert len(told) == 1 and "is deleted" in told[0], told
        assert "not deleted" not in caplog.text
        status, _body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 404
        async with open_peer(server, session_id) as resumer:  # as the 1011 told them
            await resumer.send({"type": "hello", "last_seq": 1, "epoch": epoch})
            assert await closed_with(resumer, 4404) == []
        monkeypatch.undo()
    async with embedded(config) as server:  # its open finished the delete
        status, _body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 404
        assert not list(config.layout.sessions.iterdir())


def opened_without_the_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tools' store opened as an embedder's, without its WAL, its file threads
    refusing the sync of a delete's renames (tests/test_jsonl_refused_deletes.py)."""

    async def open_storage(url: str, **_options: Any) -> JsonlStorage:
        return await JsonlStorage.open(without_the_wal(Path(url)))

    real_run = FileJobs.run

    def run(jobs: FileJobs, function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        if function.__name__ == "settle_renames":
            raise StorageError("the store takes no more work: cannot schedule new futures")
        return real_run(jobs, function, *args)

    monkeypatch.setattr(tools_store, "open_storage", open_storage)
    monkeypatch.setattr(FileJobs, "run", run)


def sessions(data_dir: Path, *ids: str, expired: bool = False) -> None:
    async def make() -> None:
        async with await JsonlStorage.open(without_the_wal(data_dir)) as storage:
            for session_id in ids:
                await storage.create_session(Session.new(session_id))
                if expired:
                    await storage.update_session_state(session_id, SessionState.EXPIRED)

    asyncio.run(make())


def listed(data_dir: Path) -> list[str]:
    code, out, err = tool("ls", "--json", "--data-dir", str(data_dir))
    assert code == 0, err
    return sorted(s["id"] for s in json.loads(out)["sessions"])


def test_the_delete_tool_says_a_session_is_deleted_not_durably_and_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "store"
    sessions(data_dir, "a", "b", "c")
    opened_without_the_wal(monkeypatch)
    assert main(["delete", "a", "b", "--data-dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == "2\n"
    said = [line for line in err.splitlines() if line.startswith("bamboo-session:")]
    assert said == [
        f"bamboo-session: delete: session {i} {NOT_DURABLY}: its directory could not be "
        "synced (the store takes no more work: cannot schedule new futures)"
        for i in ("a", "b")
    ], err
    monkeypatch.undo()
    assert listed(data_dir) == ["c"]  # and the next open finished both deletes


def test_the_cleanup_tool_counts_an_expired_session_deleted_not_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "store"
    sessions(data_dir, "old", expired=True)
    sessions(data_dir, "kept")
    opened_without_the_wal(monkeypatch)
    assert main(["cleanup", "--data-dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    assert out == "1\n"
    assert f"bamboo-session: cleanup: session old {NOT_DURABLY}: " in err, err
    monkeypatch.undo()
    assert listed(data_dir) == ["kept"]
