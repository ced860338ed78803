"""A JSONL create that replaces an expired session (``create_session(...,
replace_expired=True)``, persistence/jsonl/lifecycle.py) and fails partway, on real
files: the WAL cannot record the old session's deletion (the sync helper's
``fdatasync`` fails with EIO, tests/failing_sync_helper.py), or its checkpoint cannot
become a tombstone (a directory stands at the tombstone's path).

The caller gets a StorageError; the ``.json.replacing`` checkpoint is gone and the
old session is back, whole, as after a failed delete; a retry replaces it; and no
stale replacement is left for the next open to install over a newer session. A
delete of the old session that fails while a replacement waits for it leaves it
whole too; so does a ``.replacing`` file whose rename into place could not be
synced (injected: the directory's fsync fails). If the replacement cannot even be
undone (the ``.replacing`` file cannot be removed: injected), the id takes no create
until the next open finishes it."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionExists,
    StorageError,
)
from bamboo_session.persistence.jsonl import files, lifecycle, syncer
from bamboo_session.protocol.models import AgentEvent, Session, SessionState

OLD_EVENTS = [AgentEvent.token("old1"), AgentEvent.token("old2")]


class FailingSync:
    """The sync helper of the stores opened meanwhile: its next ``fdatasync`` after
    :meth:`arm` fails with EIO, for real."""

    def __init__(self, trigger: Path) -> None:
        self.trigger = trigger

    def arm(self) -> None:
        self.trigger.touch()

    def fired(self) -> bool:
        return not self.trigger.exists()


@pytest.fixture(name="fail_sync")
def fail_sync_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FailingSync:
    trigger = tmp_path / "fail-next-sync"
    monkeypatch.setenv("BAMBOO_TEST_FAIL_SYNC", str(trigger))
    monkeypatch.setattr(syncer, "_HELPER", Path(__file__).with_name("failing_sync_helper.py"))
    return FailingSync(trigger)


async def expired(storage: JsonlStorage, session_id: str = "s1") -> Session:
    old = Session.new(session_id, user_id="u1")
    await storage.create_session(old)
    await storage.append_events(session_id, [(event, None) for event in OLD_EVENTS])
    await storage.update_session_state(session_id, SessionState.EXPIRED)
    return old


async def events_of(storage: JsonlStorage, session_id: str) -> list[object]:
    return [event.event for event in await storage.read_events(session_id)]


async def replace_for_good(storage: JsonlStorage) -> Session:
    """A replacement that works: the new session, with one event."""
    new = Session.new("s1", user_id="u2")
    await storage.create_session(new, replace_expired=True)
    await storage.append_event("s1", AgentEvent.token("new1"))
    return new


async def assert_kept(config: JsonlStorageConfig, new: Session) -> None:
    """The next open has the session ``replace_for_good`` made, and its event."""
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s1")
        assert meta is not None and meta.epoch == new.metadata.epoch
        assert await events_of(storage, "s1") == [AgentEvent.token("new1")]


async def assert_old_is_back(
    storage: JsonlStorage, config: JsonlStorageConfig, old: Session
) -> None:
    assert not config.layout.replacement("s1").exists()
    meta = await storage.get_metadata("s1")
    assert meta is not None and meta.epoch == old.metadata.epoch
    assert await events_of(storage, "s1") == OLD_EVENTS
    with pytest.raises(SessionExists):  # not a plain create over the old files
        await storage.create_session(Session.new("s1"))


async def test_a_replacement_whose_deletion_the_wal_cannot_record_is_undone(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        old = await expired(storage)
        fail_sync.arm()
        with pytest.raises(StorageError, match="deletion"):
            await storage.create_session(Session.new("s1", user_id="u2"), replace_expired=True)
        assert fail_sync.fired()  # the helper's sync failed, for real
        await assert_old_is_back(storage, config, old)
    # The WAL never recorded the deletion: the old session is still whole after an open.
    async with await JsonlStorage.open(config) as storage:
        await assert_old_is_back(storage, config, old)
        new = await replace_for_good(storage)  # a retry works
    await assert_kept(config, new)


async def test_a_retry_in_the_same_run_replaces_and_the_next_open_keeps_the_new_session(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        await expired(storage)
        fail_sync.arm()
        with pytest.raises(StorageError):
            await storage.create_session(Session.new("s1"), replace_expired=True)
        new = await replace_for_good(storage)
    await assert_kept(config, new)


async def test_a_replacement_whose_tombstone_cannot_be_made_is_undone(tmp_path: Path) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        old = await expired(storage)
        blocker = block_tombstone(config, "s1")
        with pytest.raises(StorageError):
            await storage.create_session(Session.new("s1"), replace_expired=True)
        await assert_old_is_back(storage, config, old)
        (blocker / "x").unlink()
        blocker.rmdir()
        new = await replace_for_good(storage)
    await assert_kept(config, new)


async def test_no_stale_replacement_overrides_a_later_create_at_the_next_open(
    tmp_path: Path, fail_sync: FailingSync
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        await expired(storage)
        fail_sync.arm()
        with pytest.raises(StorageError):
            await storage.create_session(Session.new("s1", title="stale"), replace_expired=True)
        # Whichever create the store accepts now, its session is the one that stays.
        later = Session.new("s1", title="later")
        try:
            await storage.create_session(later)
        except SessionExists:
            await storage.create_session(later, replace_expired=True)
        await storage.append_event("s1", AgentEvent.token("later1"))
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s1")
        assert meta is not None and (meta.title, meta.epoch) == ("later", later.metadata.epoch)
        assert await events_of(storage, "s1") == [AgentEvent.token("later1")]


def block_tombstone(config: JsonlStorageConfig, session_id: str) -> Path:
    """A non-empty directory at the tombstone's path: renaming the checkpoint over it
    fails (EISDIR) until it is removed."""
    blocker = config.layout.tombstone(session_id)
    blocker.mkdir()
    (blocker / "x").touch()
    return blocker


async def test_a_delete_that_fails_while_a_replacement_waits_for_it_leaves_the_old_session(
    tmp_path: Path,
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    async with await JsonlStorage.open(config) as storage:
        old = await expired(storage)
        blocker = block_tombstone(config, "s1")
        replacing, deleting = await asyncio.gather(
            storage.create_session(Session.new("s1"), replace_expired=True),
            storage.delete_session("s1"),
            return_exceptions=True,
        )
        # The replacement did not install its checkpoint over the one the failed
        # delete left (with the old log beside it).
        assert isinstance(replacing, StorageError), replacing
        assert isinstance(deleting, StorageError), deleting
        await assert_old_is_back(storage, config, old)
        (blocker / "x").unlink()
        blocker.rmdir()
    async with await JsonlStorage.open(config) as storage:
        await assert_old_is_back(storage, config, old)


async def test_a_replacement_that_cannot_be_undone_blocks_the_id_until_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    real_unlink = os.unlink

    def unlink(path: str | os.PathLike[str], *args: object, **kwargs: object) -> None:
        if os.fspath(path).endswith(".replacing"):
            raise OSError(errno.EIO, "injected EIO")
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

    async with await JsonlStorage.open(config) as storage:
        await expired(storage)
        blocker = block_tombstone(config, "s1")
        stale = Session.new("s1", title="stale")
        monkeypatch.setattr(lifecycle.os, "unlink", unlink)
        with pytest.raises(StorageError):
            await storage.create_session(stale, replace_expired=True)
        monkeypatch.undo()
        (blocker / "x").unlink()
        blocker.rmdir()
        assert config.layout.replacement("s1").exists()  # the next open installs it
        assert await storage.get_metadata("s1") is None
        for replace_expired in (False, True):
            with pytest.raises(StorageError, match="opened again"):
                await storage.create_session(Session.new("s1"), replace_expired=replace_expired)
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s1")
        assert meta is not None and (meta.title, meta.epoch) == ("stale", stale.metadata.epoch)
        assert await storage.read_events("s1") == []
        assert not config.layout.replacement("s1").exists()


async def test_a_replacement_checkpoint_renamed_but_not_synced_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path / "data")
    real_fsync_dir = files.fsync_dir
    failing = {"on": False}

    def fsync_dir(path: Path) -> None:
        if failing["on"] and path == config.layout.sessions:
            failing["on"] = False
            raise OSError(errno.EIO, "injected EIO")
        real_fsync_dir(path)

    monkeypatch.setattr(files, "fsync_dir", fsync_dir)  # write_atomic's, after its rename
    async with await JsonlStorage.open(config) as storage:
        old = await expired(storage)
        failing["on"] = True
        with pytest.raises(StorageError):
            await storage.create_session(Session.new("s1", title="stale"), replace_expired=True)
        await assert_old_is_back(storage, config, old)
        # Once the old session is gone another way, a plain create is the one that stays.
        assert await storage.cleanup_expired_sessions() == 1
        later = Session.new("s1", title="later")
        await storage.create_session(later)
        await storage.append_event("s1", AgentEvent.token("later1"))
    async with await JsonlStorage.open(config) as storage:
        meta = await storage.get_metadata("s1")
        assert meta is not None and (meta.title, meta.epoch) == ("later", later.metadata.epoch)
        assert await events_of(storage, "s1") == [AgentEvent.token("later1")]


async def test_a_replacement_under_way_when_the_store_closes_ends(tmp_path: Path) -> None:
    """A create replacing an expired session whose replacement checkpoint is still
    being written when the store closes: the close waits for it (a writer that had
    stopped first would refuse the old session's deletion: StorageError). The create
    ends, and the next open holds the old session or the new one, whole. (It waited
    for ever: its deletion was queued behind a writer that had stopped; and so did the
    loop's shutdown, which cannot cancel a replacement.)"""
    for attempt in range(3):
        config = JsonlStorageConfig(tmp_path / f"data{attempt}")
        storage = await JsonlStorage.open(config)
        old = await expired(storage)
        new = Session.new("s1", title="new")
        creating = asyncio.ensure_future(storage.create_session(new, replace_expired=True))
        await asyncio.sleep(0)  # under way: its checkpoint is written in a thread
        await storage.close()
        done, _ = await asyncio.wait({creating}, timeout=10)
        assert done, "the create never ended"
        async with await JsonlStorage.open(config) as storage:
            meta = await storage.get_metadata("s1")
            assert meta is not None
            if creating.exception() is None or meta.epoch == new.metadata.epoch:
                assert meta.epoch == new.metadata.epoch and await events_of(storage, "s1") == []
            else:
                assert isinstance(creating.exception(), StorageError)
                await assert_old_is_back(storage, config, old)
