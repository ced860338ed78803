"""Read-only opening (JsonlStorageConfig.read_only, open_storage(url, read_only=True)):
an existing store only, nothing created or changed, every write refused, and a
best-effort view while a server holds the store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bamboo_session.persistence import (
    JsonlStorage,
    JsonlStorageConfig,
    SessionFilter,
    StorageError,
    open_storage,
)
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.jsonl_support import crash_state, log_path


def listing(base: Path) -> list[Path]:
    return sorted(base.rglob("*"))


def files_of(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in base.rglob("*") if p.is_file()}


async def seeded(base: Path) -> JsonlStorageConfig:
    config = JsonlStorageConfig(base)
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("s", user_id="u"))
        for i in range(3):
            await storage.append_message("s", Message.user(f"m{i}"))
            await storage.append_event("s", AgentEvent.token(f"t{i}"), key=f"k{i}")
    return config


@pytest.mark.parametrize("what", ["missing", "empty", "other"])
async def test_a_directory_that_is_not_a_store_is_refused(tmp_path: Path, what: str) -> None:
    base = tmp_path / "data"
    if what != "missing":
        base.mkdir()
    if what == "other":
        (base / "notes.txt").write_text("not a store")
    before = listing(tmp_path)
    with pytest.raises(StorageError, match=f"{base} is not a bamboo JSONL store"):
        await open_storage(str(base), read_only=True)
    assert listing(tmp_path) == before  # nothing created, not even LOCK


async def test_every_write_is_refused(tmp_path: Path) -> None:
    config = await seeded(tmp_path)
    before = files_of(tmp_path)
    storage = await open_storage(f"jsonl://{tmp_path}", read_only=True)
    assert isinstance(storage, JsonlStorage) and storage.read_only and not storage.ready
    writes = [
        storage.create_session(Session.new("t")),
        storage.append_event("s", AgentEvent.token("x")),
        storage.append_events("s", [(AgentEvent.token("x"), None)]),
        storage.append_message("s", Message.user("x")),
        storage.update_session_state("s", SessionState.CLOSED),
        storage.touch("s"),
        storage.delete_session("s"),
        storage.cleanup_expired_sessions(),
        storage.import_metadata((await storage.get_metadata("s")) or Session.new("s").metadata),
        storage.clear_damaged(),
    ]
    for write in writes:
        with pytest.raises(StorageError, match="read-only"):
            await write
    assert [m.content for m in await storage.get_session_history("s")] == ["m0", "m1", "m2"]
    assert [e.key for e in await storage.read_events("s")] == [None, "k0", None, "k1", None, "k2"]
    await storage.close()
    await storage.close()
    assert files_of(tmp_path) == before
    assert config.layout.snapshot.exists()  # not consumed: the next writer's fast start


async def test_it_reads_while_a_server_holds_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = await seeded(tmp_path)
    async with await JsonlStorage.open(config) as server:
        await server.append_message("s", Message.user("live"))
        await server.update_session_state("s", SessionState.IDLE)  # lazy: not on disk yet
        with caplog.at_level(logging.INFO, logger="bamboo_session.persistence"):
            reader = await JsonlStorage.open(config.with_read_only())
        try:
            assert f"in use by pid {os.getpid()}" in caplog.text
            history = await reader.get_session_history("s")
            assert [m.content for m in history][-1] == "live"
            assert await reader.last_seq("s") == 7
            page = await reader.get_history_page("s", 2)
            assert [m.content for m in page.messages] == ["m2", "live"]
        finally:
            await reader.close()
        assert server.ready  # the reader took nothing from it
        await server.append_event("s", AgentEvent.token("after"))


async def test_a_crashed_store_is_read_without_repair(tmp_path: Path) -> None:
    config = await seeded(tmp_path)
    crash_state(config)
    with log_path(config).open("ab") as log:
        log.write(b'{"seq":7,"ts":"2025-')  # a torn last line
    before = files_of(tmp_path)
    async with await JsonlStorage.open(config.with_read_only()) as reader:
        assert await reader.last_seq("s") == 6  # the torn line is not an event
        assert (await reader.list_sessions(SessionFilter())).total == 1
        assert reader.recovery is not None and reader.recovery.torn_lines_cut == 0
    assert files_of(tmp_path) == before  # nothing cut, nothing written
    async with await JsonlStorage.open(config) as writer:  # the writer repairs it
        assert writer.recovery is not None and writer.recovery.torn_lines_cut == 1


@pytest.mark.parametrize("offline", [False, True])
async def test_a_lock_file_that_cannot_be_opened_refuses_in_one_line(
    tmp_path: Path, offline: bool
) -> None:
    """A directory where ``LOCK`` should be (put there by hand): the writer and the
    offline reader (which takes the lock shared) are refused alike, in one line naming
    it, and nothing is read or changed."""
    config = await seeded(tmp_path)
    config.layout.lock.unlink()
    config.layout.lock.mkdir()  # refuses O_RDWR even to root, unlike a mode of 000
    before = listing(tmp_path)
    url = f"jsonl://{tmp_path}"
    opening = open_storage(url, read_only=True, offline=True) if offline else open_storage(url)
    with pytest.raises(StorageError) as refused:
        await opening
    assert str(refused.value) == (
        f"cannot lock the store at {tmp_path}: Is a directory: {config.layout.lock}"
    )
    assert listing(tmp_path) == before
