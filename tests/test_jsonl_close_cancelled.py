"""The JSONL store's close cancelled midway, on real files: whatever it was waiting for,
the writer is closed before the directory's lock is released, so no descriptor of the
store stays open and no task of it writes on after another process may have opened it
(tests/test_jsonl_writeback_errors.py: cancelled during the close's log syncs and its
snapshot write)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol.models import AgentEvent, Session
from tests.held_delete_support import held_directory_sync
from tests.test_jsonl_writeback_errors import store_files_open, tokens


async def test_a_close_cancelled_while_a_delete_ends_still_closes_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close waits for a delete under way (held at its directory sync) and is
    cancelled there: the writer is closed all the same (it was left running, its log
    and WAL descriptors open, with the lock released); the delete then ends, and the
    next open has the other session whole."""
    config = JsonlStorageConfig(tmp_path)
    storage = await JsonlStorage.open(config)
    for session_id in ("a", "b"):
        await storage.create_session(Session.new(session_id))
        await storage.append_event(session_id, AgentEvent.token(session_id))
    started, release = held_directory_sync(monkeypatch, config.layout.sessions, fails=False)
    deleting = asyncio.create_task(storage.delete_session("b"))
    assert await asyncio.to_thread(started.wait, 10)
    closing = asyncio.create_task(storage.close())
    await asyncio.sleep(0)  # the close starts, and waits for the delete
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    release.set()
    await asyncio.gather(deleting, return_exceptions=True)
    assert store_files_open(config) == 0
    async with await JsonlStorage.open(config) as storage:
        assert await tokens(storage, "a") == [AgentEvent.token("a")]
