"""After a failed fsync, a later one that succeeds does not mean what the failed one
covered reached the disk (Linux forgets a reported error: "fsyncgate"). The JSONL
store never acknowledges on such a retry: a delete whose directory sync failed fails
without the WAL (the session back, whole), and with it keeps its deletion in the WAL,
which then keeps every segment until the next open replays them; so does a failed
directory sync while retiring a segment (persistence/jsonl/lifecycle.py,
retirement.py). Failures are injected (EIO) in the module's ``fsync_dir``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bamboo_session.persistence import (
    AppendsSuspended,
    DeletedNotDurably,
    JsonlStorage,
    JsonlStorageConfig,
    StorageError,
)
from bamboo_session.persistence.jsonl import deletes, retirement
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.jsonl_support import killed_child, segments
from tests.test_jsonl_wal_room import Lines, crash_image_with, record


def failing_directory_sync(
    monkeypatch: pytest.MonkeyPatch, module: Any, directory: Path
) -> dict[str, int]:
    """``module.fsync_dir`` fails with EIO for ``directory`` while ``switch["left"]``
    is above 0 (each failure counts it down); ``switch["failed"]`` counts failures."""
    real = module.fsync_dir
    switch = {"left": 0, "failed": 0}

    def fsync_dir(path: Path) -> None:
        if switch["left"] > 0 and Path(path) == directory:
            switch["left"] -= 1
            switch["failed"] += 1
            raise OSError(errno.EIO, "injected EIO")
        real(path)

    monkeypatch.setattr(module, "fsync_dir", fsync_dir)
    return switch


async def undone_delete(storage: JsonlStorage, failing: dict[str, int]) -> None:
    """Session "s"'s delete fails at its directory sync (``failing``), and is undone."""
    failing["left"] = 1
    with pytest.raises(StorageError, match="not deleted"):
        await storage.delete_session("s")


async def tokens(storage: JsonlStorage, session_id: str) -> list[AgentEvent]:
    return [stored.event for stored in await storage.read_events(session_id)]


def deletion_recorded(config: JsonlStorageConfig, session_id: str) -> bool:
    marker = f'"sid":"{session_id}","deleted":true'.encode()
    return any(marker in path.read_bytes() for path in segments(config))


async def test_without_the_wal_a_delete_whose_directory_sync_fails_fails_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.append_event("s", AgentEvent.token("kept"))
        assert not storage.sync_failed
        await undone_delete(storage, failing)
        assert failing["failed"] == 1
        assert storage.sync_failed  # for /metrics: a restart settles the session
        # Back, whole: readable, its files in place and no tombstone; but the rename
        # back is not known durable either, so it takes no append until an open.
        assert await storage.get_metadata("s") is not None
        assert await tokens(storage, "s") == [AgentEvent.token("kept")]
        assert config.layout.checkpoint("s").exists()
        assert not config.layout.tombstone("s").exists()
        with pytest.raises(StorageError, match="no appends"):
            await storage.append_event("s", AgentEvent.token("refused"))
    async with await JsonlStorage.open(config) as storage:
        assert not storage.sync_failed
        assert await tokens(storage, "s") == [AgentEvent.token("kept")]
        assert (await storage.append_event("s", AgentEvent.token("after"))).seq == 2
        assert await tokens(storage, "s") == [AgentEvent.token("kept"), AgentEvent.token("after")]
        await storage.delete_session("s")  # once the directory syncs, a delete works
        assert await storage.get_metadata("s") is None
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is None


async def test_without_the_wal_a_delete_whose_rename_back_fails_is_said_deleted_not_durably(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = JsonlStorageConfig(tmp_path / "store").with_wal(enabled=False)
    tombstone = config.layout.tombstone("s")
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    real = deletes.fsync_dir

    def fsync_dir(path: Path) -> None:  # the rename back then finds no tombstone to rename
        if failing["left"] > 0:
            tombstone.rename(tmp_path / "aside")
        real(path)

    monkeypatch.setattr(deletes, "fsync_dir", fsync_dir)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        failing["left"] = 1
        with pytest.raises(DeletedNotDurably):
            await storage.delete_session("s")
        told = [r.getMessage() for r in caplog.records if "'s'" in r.getMessage()]
        assert len(told) == 1, told
        assert told[0].startswith("session 's' is deleted, not durably until the next open: ")
        assert "injected EIO" in told[0] and "undoing its delete too" in told[0]
        assert await storage.get_metadata("s") is None


async def test_a_power_cut_after_an_undone_delete_takes_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the WAL, the disk may hold the tombstone's rename and not the rename
    back (neither synced): the next open then finishes the delete. So nothing is
    acknowledged for the session in between, or it would go with it."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await storage.append_event("s", AgentEvent.token("kept"))
        await undone_delete(storage, failing)
        acknowledged = []
        for i in range(3):
            with contextlib.suppress(StorageError):
                acknowledged.append(await storage.append_event("s", AgentEvent.token(str(i))))
    # The power cut's disk: the delete's rename there, the undoing lost.
    os.replace(config.layout.checkpoint("s"), config.layout.tombstone("s"))
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is None  # the delete finished, whole
    assert acknowledged == []


async def test_an_undone_delete_takes_no_close_expiry_or_imported_metadata_either(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each is synced into the checkpoint's file, which a power cut may leave named as
    the tombstone: the next open would then delete the session it was acknowledged
    for, as it would an append's. Nothing of a refused one changes. A move among the
    live states and activity promise nothing on disk, and go on."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await undone_delete(storage, failing)
        before = await storage.get_metadata("s")
        assert before is not None and before.state == SessionState.ACTIVE
        for state in (SessionState.CLOSED, SessionState.EXPIRED):
            with pytest.raises(AppendsSuspended, match="no close, expiry"):
                await storage.update_session_state("s", state)
        imported = msgspec.structs.replace(before, state=SessionState.CLOSED, extra={"x": 1})
        with pytest.raises(AppendsSuspended, match="imported metadata"):
            await storage.import_metadata(imported)
        after = await storage.get_metadata("s")
        assert after is not None
        assert (after.state, after.extra) == (SessionState.ACTIVE, before.extra)
        assert (await storage.update_session_state("s", SessionState.IDLE)).state == "idle"
        await storage.touch("s")
    # The power cut's disk: the delete's rename there, the undoing lost.
    os.replace(config.layout.checkpoint("s"), config.layout.tombstone("s"))
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is None  # nothing acknowledged went


async def test_after_an_undone_delete_an_open_takes_a_close_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        await undone_delete(storage, failing)
    async with await JsonlStorage.open(config) as storage:
        closed = await storage.update_session_state("s", SessionState.CLOSED)
        assert closed.state == SessionState.CLOSED
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s")
        assert meta is not None and meta.state == SessionState.CLOSED


async def test_in_os_mode_a_delete_whose_directory_sync_fails_stands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os`` mode promises nothing on a power cut: the delete is acknowledged as the
    mode's writes are, once done (a kill -9 now leaves it deleted)."""
    config = JsonlStorageConfig(tmp_path, durability="os")
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s"))
        failing["left"] = 1
        await storage.delete_session("s")
        assert failing["failed"] == 1 and await storage.get_metadata("s") is None
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("s") is None


async def test_with_the_wal_a_delete_whose_directory_sync_fails_keeps_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_age=0.05)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        for session_id in ("gone", "kept"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token(session_id))
        await storage._checkpoints.write("gone", durable=True)
        checkpoint_before = config.layout.checkpoint("gone").read_bytes()
        failing["left"] = 1
        await storage.delete_session("gone")  # its deletion is in the synced WAL
        assert failing["failed"] == 1 and storage.sync_failed
        for i in range(4):  # each append after 0.06 s rotates, and retires what it can
            await storage.append_event("kept", AgentEvent.token(str(i)))
            await asyncio.sleep(0.06)
        await storage._writer.retirement.settled()
        # A later sync of the sessions directory that succeeds proves nothing about the
        # rename: the record that makes the delete durable stays until the next open.
        assert deletion_recorded(config, "gone")
    assert deletion_recorded(config, "gone")  # not even a clean close deletes it
    # The disk a power cut may leave: the rename lost (its sync failed), the checkpoint
    # back. The deletion's record still in the WAL finishes the delete at the open.
    config.layout.checkpoint("gone").write_bytes(checkpoint_before)
    async with await JsonlStorage.open(config) as storage:
        assert await storage.get_metadata("gone") is None
        assert len(await tokens(storage, "kept")) == 5
    assert segments(config) == []  # replayed at open, then removed


async def test_no_segment_is_retired_after_a_failed_directory_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(segment_age=0.05)
    failing = failing_directory_sync(monkeypatch, retirement, config.layout.sessions)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        failing["left"] = 1
        for i in range(4):  # each append after 0.06 s rotates; retirement syncs the dir
            await storage.append_event("a", AgentEvent.token(str(i)))
            await asyncio.sleep(0.06)
        await storage._writer.retirement.settled()
        assert failing["failed"] == 1 and storage.sync_failed
        # The retry's sync would succeed and prove nothing: everything stays.
        assert len(segments(config)) >= 3
    assert len(segments(config)) >= 3
    async with await JsonlStorage.open(config) as storage:
        assert await storage.last_seq("a") == 4 and not storage.sync_failed
    assert segments(config) == []


async def test_an_open_writes_again_what_the_wal_covers_before_deleting_it(
    tmp_path: Path,
) -> None:
    """After a sync that failed, the page cache may hold log lines the disk never got,
    marked clean: a process started later in the same boot reads them back whole, and
    a sync of its own writes nothing of them and succeeds. So replay writes again the
    lines a log holds of the WAL's, for its sync to write them (or fail), before the
    segments go. (Seen here as the logs' modification time: a fault the page cache
    hides cannot be made without a block device.)"""

    def all_whole(lines: Lines) -> bytes:
        return b"".join([*(record(lines, "s", seq) for seq in (2, 3)), record(lines, "t", 1)])

    config = await crash_image_with(tmp_path, all_whole, t_events=1)
    before = {sid: config.layout.log(sid).read_bytes() for sid in "st"}
    for sid in "st":
        os.utime(config.layout.log(sid), (946_684_800, 946_684_800))  # 2000-01-01
    async with await JsonlStorage.open(config) as storage:
        assert storage.recovery is not None and storage.recovery.wal_events_replayed == 0
        assert await tokens(storage, "s") == [AgentEvent.token(f"s{i}") for i in range(3)]
    for sid in "st":
        assert config.layout.log(sid).read_bytes() == before[sid]
        assert config.layout.log(sid).stat().st_mtime > 946_684_800
    assert segments(config) == []


@pytest.mark.parametrize("midway", [False, True])
def test_a_kill_at_each_step_of_an_undone_delete_leaves_it_whole_or_deleted_whole(
    tmp_path: Path, midway: bool
) -> None:
    """Without the WAL, the directory sync of a delete's rename fails (no descriptor
    left) and the rename is undone: a kill -9 before the rename back leaves the delete
    done (the caller was told nothing), after it the session whole, every event it
    acknowledged there; the append tried after the failure was refused."""
    base = tmp_path / "data"
    child = killed_child("undonedelete-midway" if midway else "undonedelete", base)
    told = child.stdout.splitlines()

    async def reopen() -> tuple[list[AgentEvent] | None, list[str]]:
        config = JsonlStorageConfig(base).with_wal(enabled=False)
        async with await JsonlStorage.open(config) as storage:
            assert await tokens(storage, "o") == [AgentEvent.token("other")]
            found = await tokens(storage, "d") if await storage.get_metadata("d") else None
        return found, sorted(p.name for p in config.layout.sessions.iterdir())

    found, names = asyncio.run(reopen())
    if midway:
        assert told == [] and found is None
        assert names == ["o.json"]  # no tombstone, nor any file of d, left
    else:
        assert told == ["told failed", "append refused"]
        assert found == [AgentEvent.token(f"acked{i}") for i in range(5)]
