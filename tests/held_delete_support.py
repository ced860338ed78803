"""A server on a JSONL store without WAL whose deletes a test holds at their directory
sync and fails (the store then undoes them), for tests of what the server's clients
see meanwhile and after (tests/test_undone_delete_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, StorageError
from bamboo_session.persistence.jsonl import deletes, logfiles
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from bamboo_session.server.manager import SessionManager
from bamboo_session.server.pages import StoreTimeout
from tests.instances import eventually
from tests.support import Peer, attach, get, token

EVENT_A = {"type": "event", "id": 1, "event": token("a")}


@contextlib.asynccontextmanager
async def embedded(config: JsonlStorageConfig, **overrides: Any) -> AsyncIterator[BambooServer]:
    """A server on a store opened by its embedder (the WAL off is not a URL option)."""
    settings: dict[str, Any] = {"rate_limit": 0, **overrides}
    async with await JsonlStorage.open(config) as storage:
        server = BambooServer(
            ServerConfig(host="127.0.0.1", port=0, data_dir=str(config.base_path), **settings),
            storage,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def held_directory_sync(
    monkeypatch: pytest.MonkeyPatch, directory: Path, fails: bool = True
) -> tuple[threading.Event, threading.Event]:
    """``deletes.fsync_dir`` of ``directory``, once: says it started (the first
    event), waits for the second, then fails with EIO (the file job's thread waits), or
    syncs unless ``fails``."""
    real, started, release = deletes.fsync_dir, threading.Event(), threading.Event()

    def fsync_dir(path: Path) -> None:
        if Path(path) != directory or started.is_set():
            real(path)
            return
        started.set()
        release.wait(30)
        if fails:
            raise OSError(errno.EIO, "injected EIO")
        real(path)

    monkeypatch.setattr(deletes, "fsync_dir", fsync_dir)
    return started, release


def held_log_sync(
    monkeypatch: pytest.MonkeyPatch, fails: bool = False
) -> tuple[threading.Event, threading.Event]:
    """The next sync of an event log: says it started (the first event), waits for the
    second, then syncs, or fails with EIO if ``fails``."""
    real, started, release = logfiles.datasync, threading.Event(), threading.Event()

    def datasync(fd: int) -> None:
        if not started.is_set():
            started.set()
            release.wait(30)
            if fails:
                raise OSError(errno.EIO, "injected EIO")
        real(fd)

    monkeypatch.setattr(logfiles, "datasync", datasync)
    return started, release


@dataclasses.dataclass
class HeldDelete:
    """A delete under way, held at its directory sync: the store no longer lists the
    session meanwhile."""

    task: asyncio.Task[None]
    release: threading.Event

    async def fails(self) -> None:
        """The sync fails: the store undoes the delete, and the delete says so."""
        self.release.set()
        with pytest.raises(StorageError, match="not deleted"):
            await self.task

    async def given_up(self) -> None:
        """Returns once the delete's caller has given up on the store (its deadline
        passed), which still holds the delete at its directory sync."""
        with pytest.raises(StoreTimeout, match="no answer from the store"):
            await self.task
        assert not self.release.is_set()


@dataclasses.dataclass
class Scene:
    """A server on a JSONL store without WAL, whose deletes a test holds and fails."""

    server: BambooServer
    manager: SessionManager
    config: JsonlStorageConfig
    monkeypatch: pytest.MonkeyPatch

    async def session_with_an_event(self, **hello: Any) -> str:
        """A new session (its hello given ``hello``) with one event, no peer left."""
        async with attach(self.server, role="agent", **hello) as (agent, welcome):
            await agent.request(EVENT_A, "ack")
            return str(welcome["session"]["id"])

    @contextlib.asynccontextmanager
    async def delete_held(self, session_id: str, fails: bool = True) -> AsyncIterator[HeldDelete]:
        """The session's delete, held at its directory sync for the block (unless
        released there), then let go (to fail, or succeed unless ``fails``) and awaited
        whatever its outcome."""
        sessions = self.config.layout.sessions
        started, release = held_directory_sync(self.monkeypatch, sessions, fails)
        deleting = asyncio.create_task(self.manager.delete_session(session_id))
        try:
            assert await asyncio.to_thread(started.wait, 10)
            yield HeldDelete(deleting, release)
        finally:
            release.set()
            await asyncio.wait([deleting])
            if not deleting.cancelled():  # a test may cancel it
                with contextlib.suppress(StorageError):
                    deleting.result()

    async def delete_ended(self, session_id: str) -> None:
        """Returns once the store's delete of the session has ended (its caller may
        have left long before), and with it the hold of the session."""
        hold = self.manager.actors.holds.holding.get(session_id)
        if hold is not None:
            await hold.released

    async def hello_attaching(self, session_id: str) -> None:
        """Returns once a hello to the session is under way on the server."""
        await eventually(lambda: session_id in self.manager.actors._attaching)

    async def events(self, session_id: str) -> list[int]:
        status, body = await get(self.server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200, body
        return [event["seq"] for event in body["events"]]


@contextlib.asynccontextmanager
async def scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
) -> AsyncIterator[Scene]:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    # A delete gives up on its store within the read deadline (5 s by default): one
    # held that long on a loaded CI machine, by a test of something else, would give
    # up. Tests of that bound set their own.
    overrides.setdefault("store_read_timeout", 30)
    async with embedded(config, **overrides) as server:
        assert server._manager is not None
        yield Scene(server, server._manager, config, monkeypatch)


async def closed_with(peer: Peer, code: int) -> list[dict[str, Any]]:
    """The frames ``peer`` read until the server closed it, with ``code``."""
    got, frames = await peer.closed()
    assert got == code, (got, frames)
    return frames
