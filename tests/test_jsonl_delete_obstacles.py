"""JSONL deletes that something on disk gets in the way of, on real files: a directory
where the tombstone must go (the checkpoint's rename fails: the delete failed, the session
stays), or where one of the session's other files is (the rename was done: the delete took
effect). The store opens all the same, with the obstacle still there, serves every other
session, counts the delete it could not finish (``RecoveryReport.deletes_unfinished``)
and says so in its log; the delete is retried (by the caller, or by the next open) once
the obstacle is gone. And a delete whose tombstone's directory cannot be synced took
effect: the caller is told so, as a kill -9 at that instant leaves it."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError, UserFull
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.jsonl_support import killed_child

USER_CAP = 64 * 1024


async def _two_sessions(base: Path) -> JsonlStorage:
    """A store with sessions ``d`` (a message and three events) and ``o`` (one event)."""
    storage = await JsonlStorage.open(JsonlStorageConfig(base, max_user_bytes=USER_CAP))
    for session_id in ("d", "o"):
        await storage.create_session(Session.new(session_id, user_id="u"))
    await storage.append_message("d", Message.user("hello"))
    for i in range(3):
        await storage.append_event("d", AgentEvent.token(f"d{i}"))
    await storage.append_event("o", AgentEvent.token("other"))
    return storage


def _obstacle(path: Path) -> None:
    """A directory, not empty, at ``path``: no rename over it, no unlink of it."""
    path.mkdir()
    (path / "x").touch()


async def _user_sum(storage: JsonlStorage) -> int:
    """The store's sum for user ``u``, as an append past the bound reports it."""
    with pytest.raises(UserFull) as refused:
        await storage.append_event("o", AgentEvent.token("y" * (2 * USER_CAP)))
    return refused.value.stored


async def test_a_tombstone_path_taken_fails_the_delete_not_the_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = tmp_path / "store"
    layout = JsonlStorageConfig(base).layout
    storage = await _two_sessions(base)
    _obstacle(layout.tombstone("d"))
    with pytest.raises(StorageError):
        await storage.delete_session("d")
    await storage.close()

    # The obstacle stays (the open failed on it: the unlink of a directory).
    caplog.set_level(logging.ERROR, "bamboo_session.persistence.jsonl")
    storage = await JsonlStorage.open(JsonlStorageConfig(base, max_user_bytes=USER_CAP))
    try:
        assert storage.recovery is not None and storage.recovery.deletes_unfinished == 1
        assert any(
            "'d'" in r.getMessage() and "stands where" in r.getMessage() for r in caplog.records
        )
        assert [e.seq for e in await storage.read_events("o")] == [1]
        assert (await storage.append_event("o", AgentEvent.token("more"))).seq == 2
        # d stays whole and readable: its delete failed.
        assert [e.seq for e in await storage.read_events("d")] == [1, 2, 3, 4]
        assert [m.content for m in (await storage.get_history_page("d", 10)).messages] == ["hello"]
        sizes = [(m.stored_bytes) for m in await storage.list_user_sessions("u")]
        assert await _user_sum(storage) == sum(sizes)
        with pytest.raises(StorageError):  # still in the way
            await storage.delete_session("d")
        assert (await storage.append_event("d", AgentEvent.token("after"))).seq == 5
        shutil.rmtree(layout.tombstone("d"))  # the operator removes it: the delete goes
        await storage.delete_session("d")
        assert await storage.get_metadata("d") is None
    finally:
        await storage.close()
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        assert storage.recovery is not None and storage.recovery.deletes_unfinished == 0
        assert await storage.get_metadata("d") is None
        assert [e.seq for e in await storage.read_events("o")] == [1, 2]


def test_a_tombstone_path_taken_after_a_kill(tmp_path: Path) -> None:
    """The same after a kill -9 right after the failed delete (tests/jsonl_child.py),
    the obstacle left: the open serves the store, and the session is as it was."""
    base = tmp_path / "data"

    async def other_session() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            await storage.create_session(Session.new("o"))
            await storage.append_event("o", AgentEvent.token("other"))

    asyncio.run(other_session())
    child = killed_child("faileddelete", base)
    assert child.stdout.splitlines() == ["told failed"]

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert storage.recovery is not None and storage.recovery.deletes_unfinished == 1
            assert [e.seq for e in await storage.read_events("o")] == [1]
            events = await storage.read_events("d")
            assert [e.event for e in events] == [AgentEvent.token(f"acked{i}") for i in range(5)]
            shutil.rmtree(JsonlStorageConfig(base).layout.tombstone("d"))
            await storage.delete_session("d")
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert await storage.get_metadata("d") is None
            assert storage.recovery is not None and storage.recovery.deletes_unfinished == 0

    asyncio.run(reopen())


async def test_a_file_that_cannot_be_removed_after_the_tombstone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The message index's path is a directory: the checkpoint became the tombstone, so
    the delete took effect and the caller is told so (it was told failed, with the
    session gone all the same); the tombstone stays for the next open, which opens, keeps
    the session deleted (its log is gone, not taken for a session of its own), and ends
    the delete once the obstacle is gone."""
    base = tmp_path / "store"
    layout = JsonlStorageConfig(base).layout
    storage = await _two_sessions(base)
    held = await _user_sum(storage)
    d_bytes = (await storage.get_metadata("d")).stored_bytes  # type: ignore[union-attr]
    caplog.set_level(logging.ERROR, "bamboo_session.persistence.jsonl")
    try:
        layout.message_index("d").unlink(missing_ok=True)
        _obstacle(layout.message_index("d"))
        await storage.delete_session("d")
        assert await storage.get_metadata("d") is None
        assert await _user_sum(storage) == held - d_bytes
        assert layout.tombstone("d").is_file() and not layout.log("d").exists()
        assert any("could not be removed" in r.getMessage() for r in caplog.records)
    finally:
        await storage.close()

    async with await JsonlStorage.open(JsonlStorageConfig(base, max_user_bytes=USER_CAP)) as s:
        assert s.recovery is not None and s.recovery.deletes_unfinished == 1
        assert await s.get_metadata("d") is None
        assert [m.id for m in await s.list_user_sessions("u")] == ["o"]
        assert await _user_sum(s) == held - d_bytes
    assert layout.tombstone("d").is_file()
    shutil.rmtree(layout.message_index("d"))
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        assert storage.recovery is not None and storage.recovery.deletes_unfinished == 0
        assert await storage.get_metadata("d") is None
    assert not layout.tombstone("d").exists()


def test_a_delete_whose_directory_sync_fails_took_effect(tmp_path: Path) -> None:
    """The checkpoint's rename to the tombstone is done, the sync of its directory fails
    (no descriptor left): a kill -9 at that instant leaves the session deleted (the next
    open finishes it), so the caller is told it is deleted, not that the delete failed."""
    base = tmp_path / "data"
    child = killed_child("syncfaildelete", base)
    assert "the sync of its directory failed" in child.stderr
    told = child.stdout.splitlines()

    async def reopen() -> bool:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert [e.seq for e in await storage.read_events("o")] == [1]
            return await storage.get_metadata("d") is None

    gone = asyncio.run(reopen())
    assert gone and told == ["deleted"], (told, gone)


async def test_a_create_over_a_kept_tombstone_finishes_the_delete_or_fails(
    tmp_path: Path,
) -> None:
    """A delete that kept its tombstone (the message index's path is a directory) is
    finished by a create of the same id, or the create fails naming what stands: the
    new session was made over the leftover, which then stood where its message index
    goes (its history unreadable once the store was opened again)."""
    base = tmp_path / "store"
    layout = JsonlStorageConfig(base).layout
    storage = await _two_sessions(base)
    try:
        layout.message_index("d").unlink(missing_ok=True)
        _obstacle(layout.message_index("d"))
        await storage.delete_session("d")
        with pytest.raises(StorageError, match="earlier delete left"):
            await storage.create_session(Session.new("d", user_id="u"))
        assert await storage.get_metadata("d") is None
        assert not layout.checkpoint("d").exists() and layout.tombstone("d").is_file()
        shutil.rmtree(layout.message_index("d"))
        await storage.create_session(Session.new("d", user_id="u"))
        assert not layout.tombstone("d").exists()
        await storage.append_message("d", Message.user("new"))
    finally:
        await storage.close()
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        history = await storage.get_history_page("d", 10)
        assert [m.content for m in history.messages] == ["new"]


async def test_a_replacement_over_a_kept_tombstone_fails_cleanly(tmp_path: Path) -> None:
    """The same for a create that replaces an expired session whose delete keeps its
    tombstone: the create fails, the expired session is deleted (its delete took
    effect), and no new session stands over the leftover."""
    base = tmp_path / "store"
    layout = JsonlStorageConfig(base).layout
    storage = await _two_sessions(base)
    try:
        await storage.update_session_state("d", SessionState.EXPIRED)
        layout.message_index("d").unlink(missing_ok=True)
        _obstacle(layout.message_index("d"))
        with pytest.raises(StorageError, match="earlier delete left"):
            await storage.create_session(Session.new("d", user_id="u"), replace_expired=True)
        assert await storage.get_metadata("d") is None
        assert not layout.checkpoint("d").exists()
        assert not layout.replacement("d").exists()
        shutil.rmtree(layout.message_index("d"))
        await storage.create_session(Session.new("d", user_id="u"), replace_expired=True)
        await storage.append_message("d", Message.user("new"))
    finally:
        await storage.close()
    async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
        history = await storage.get_history_page("d", 10)
        assert [m.content for m in history.messages] == ["new"]


def test_a_delete_whose_sync_fails_after_its_segment_retired_stays_recorded(
    tmp_path: Path,
) -> None:
    """The WAL segment recording the deletion is retired (the sessions directory synced)
    before the checkpoint's rename, whose directory sync then fails: the delete is
    answered done, so the WAL must record it again, or a power cut that loses the
    unsynced rename brings the session back with nothing to finish its delete. The disk
    is put as such a power cut leaves it (the tombstone back to the checkpoint) after a
    kill -9 (tests/jsonl_child.py); the open finishes the delete from the WAL."""
    base = tmp_path / "data"
    layout = JsonlStorageConfig(base).layout
    child = killed_child("retiredsyncfaildelete", base)
    assert "the sync of its directory failed" in child.stderr
    assert child.stdout.splitlines() == ["deleted"]
    layout.tombstone("d").replace(layout.checkpoint("d"))  # the rename a power cut lost
    shutil.rmtree(layout.message_index("d"))

    async def reopen() -> None:
        async with await JsonlStorage.open(JsonlStorageConfig(base)) as storage:
            assert [e.seq for e in await storage.read_events("o")] == [1, 2]
            assert await storage.get_metadata("d") is None

    asyncio.run(reopen())
