"""A group commit's steps under failures that come from outside the disk
(persistence/jsonl/commits.py, writer.py): the writer never stops, and nothing it
failed to cut back can shadow a later append."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import logfiles, tasks
from bamboo_session.protocol.models import AgentEvent, Session


async def test_a_close_that_fails_does_not_stop_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"on": False}
    real_close = os.close

    def close(fd: int) -> None:
        real_close(fd)
        if failing["on"]:  # closed all the same, as NFS does when it reports EIO
            failing["on"] = False
            raise OSError(errno.EIO, "injected EIO on close")

    monkeypatch.setattr(logfiles.os, "close", close)
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        for session_id in ("gone", "kept"):
            await storage.create_session(Session.new(session_id))
            await storage.append_event(session_id, AgentEvent.token("x"))
        failing["on"] = True
        async with asyncio.timeout(10):  # before the fix, the writer died: a hang
            await storage.delete_session("gone")  # its descriptor's close fails
            assert not failing["on"]
            assert (await storage.append_event("kept", AgentEvent.token("y"))).seq == 2
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path)) as storage:
        assert await storage.last_seq("kept") == 2
        assert await storage.get_metadata("gone") is None


async def test_a_commit_whose_thread_cannot_run_is_cut_before_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"on": False}
    real_run = tasks.IoThread.run

    def run(self: tasks.IoThread, *args: Any) -> Any:
        if failing["on"]:
            failing["on"] = False
            raise RuntimeError("can't start new thread")
        return real_run(self, *args)

    monkeypatch.setattr(tasks.IoThread, "run", run)
    config = JsonlStorageConfig(tmp_path, sync_helper=False)  # every sync on the thread
    async with await JsonlStorage.open(config) as storage:
        await storage.create_session(Session.new("a"))
        await storage.append_event("a", AgentEvent.token("ok1"))
        failing["on"] = True
        with pytest.raises(StorageError):
            await storage.append_event("a", AgentEvent.token("never acknowledged"))
        assert (await storage.append_event("a", AgentEvent.token("ok2"))).seq == 2
        events = await storage.read_events("a")
        assert [e.event for e in events] == [AgentEvent.token("ok1"), AgentEvent.token("ok2")]
    async with await JsonlStorage.open(config) as storage:
        events = await storage.read_events("a")
        assert [(e.seq, e.event) for e in events] == [
            (1, AgentEvent.token("ok1")),
            (2, AgentEvent.token("ok2")),
        ]
