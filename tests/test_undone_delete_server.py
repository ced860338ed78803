"""What a WebSocket client sees of a session whose delete the JSONL store undid (no
WAL, ``fsync`` mode: the delete's directory sync failed, and the rename back is not
known durable either, ``persistence/jsonl/lifecycle.py``): its connections are closed
with 1011 (resume), never 4404 (stop), and with 1012 when the server stops before the
delete's outcome, or 1011 when the delete is cancelled; an attach or a close that
raced the delete waits for its outcome; the session is readable, and every append is
refused with ``internal`` saying that only a restart lets it in; the refusal holds for
an actor created after the failed delete, and after the restart the same append, with
the same key, is taken."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.persistence import (
    AppendsSuspended,
    JsonlStorage,
    JsonlStorageConfig,
    StorageError,
)
from bamboo_session.persistence.jsonl import lifecycle, logfiles
from bamboo_session.protocol.models import AgentEvent
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.instances import eventually
from tests.support import Peer, attach, get, open_peer, stream_url, token
from tests.test_auth import SECRET, make_token
from tests.test_jsonl_sync_failures import failing_directory_sync, tokens
from tests.test_server_shutdown import publish_acked


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


async def test_appends_after_an_undone_delete_wait_for_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, lifecycle, config.layout.sessions)
    retry = {"type": "event", "id": 2, "key": "k2", "event": token("b")}
    async with embedded(config) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "key": "k1", "event": token("a")}, "ack")
        failing["left"] = 1
        assert server._manager is not None
        with pytest.raises(StorageError, match="not deleted"):
            await server._manager.delete_session(session_id)  # its actor stopped first
        async with attach(server, session_id, role="agent") as (agent, welcome):
            assert welcome["session"]["last_seq"] == 1  # readable, by a new actor
            error = await agent.request(retry, "error")
            assert error["code"] == "internal" and error["id"] == 2
            assert error["message"].startswith(
                "the store takes no appends to this session until the server restarts"
            ), error
            assert (await agent.request({"type": "ping", "id": 3}, "pong"))["id"] == 3
    async with embedded(config) as server:  # the restart: its open settles the session
        async with attach(server, session_id, role="agent") as (agent, _welcome):
            assert (await agent.request(retry, "ack"))["seq"] == 2
        assert isinstance(server.storage, JsonlStorage)
        assert await tokens(server.storage, session_id) == [
            AgentEvent.token("a"),
            AgentEvent.token("b"),
        ]


async def test_the_clients_of_a_session_whose_delete_failed_resume_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They are told 1011 (reconnect with resume), not 4404 (stop): the session is
    still there, with every event it acknowledged. Its delete that succeeds later
    tells them 4404."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, lifecycle, config.layout.sessions)
    async with embedded(config) as server:
        assert server._manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            async with attach(server, session_id) as (viewer, _welcome):
                await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
                failing["left"] = 1
                with pytest.raises(StorageError, match="not deleted"):
                    await server._manager.delete_session(session_id)
                for peer in (agent, viewer):
                    code, frames = await peer.closed()
                    assert code == 1011, (code, frames)
                    assert frames[-1] == {"type": "closed", "reason": "session not deleted"}
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1], body
        async with attach(server, session_id, last_seq=0, epoch=epoch) as (viewer, welcome):
            assert welcome["resumed"] is True and welcome["replay"] == 1, welcome
            assert (await viewer.recv_type("event"))["event"] == token("a")
            await server._manager.delete_session(session_id)  # the sync holds this time
            code, frames = await viewer.closed()
            assert code == 4404 and frames[-1] == {"type": "closed", "reason": "session deleted"}
        status, _body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 404


def held_directory_sync(
    monkeypatch: pytest.MonkeyPatch, directory: Path
) -> tuple[threading.Event, threading.Event]:
    """``lifecycle.fsync_dir`` of ``directory``, once: says it started (the first
    event), waits for the second, then fails with EIO (the file job's thread waits)."""
    real, started, release = lifecycle.fsync_dir, threading.Event(), threading.Event()

    def fsync_dir(path: Path) -> None:
        if Path(path) != directory or started.is_set():
            real(path)
            return
        started.set()
        release.wait(30)
        raise OSError(errno.EIO, "injected EIO")

    monkeypatch.setattr(lifecycle, "fsync_dir", fsync_dir)
    return started, release


async def test_an_attach_racing_a_delete_that_fails_is_welcomed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello that comes while the store is deleting the session (it no longer lists
    it then) waits for the outcome: the delete fails, so it is welcomed to the session
    with its events, not told 4404."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        started, release = held_directory_sync(monkeypatch, config.layout.sessions)
        deleting = asyncio.create_task(manager.delete_session(session_id))
        try:
            assert await asyncio.to_thread(started.wait, 10)
            assert await manager.storage.get_metadata(session_id) is None  # mid-delete
            async with open_peer(server, session_id) as peer:
                await peer.send({"type": "hello", "last_seq": 0})
                # The server took the hello: its attach waits, or it was refused.
                await eventually(
                    lambda: (
                        session_id in manager.actors._attaching or peer.ws.close_code is not None
                    )
                )
                release.set()
                with pytest.raises(StorageError, match="not deleted"):
                    await deleting
                welcome = await peer.recv()
                assert welcome["type"] == "welcome" and welcome["last_seq"] == 1, welcome
                assert (await peer.recv_type("event"))["event"] == token("a")
        finally:
            release.set()
            with contextlib.suppress(StorageError):
                await deleting


async def test_a_stop_during_a_delete_tells_its_held_clients_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops while the store deletes the session (held at its directory
    sync): its clients, whose closes wait for the delete's outcome, get `closed`
    "server restarting" and 1012 as every other client does, not a dropped socket
    (1006) once the grace has run out; the outcome known later changes nothing."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
            started, release = held_directory_sync(monkeypatch, config.layout.sessions)
            deleting = asyncio.create_task(manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                stopping = asyncio.create_task(server.stop())
                code, frames = await agent.closed()
                assert code == 1012 and frames == [
                    {"type": "closed", "reason": "server restarting"}
                ], (code, frames)
                await stopping
            finally:
                release.set()
                with contextlib.suppress(StorageError):
                    await deleting


async def test_a_delete_cancelled_while_the_session_stores_an_append_resumes_its_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete is cancelled while the live actor, which it asked to retire, still
    stores an append (its log's sync held): the actor hands its connections over once
    the append is acked, after the delete gave up, and they are closed with 1011
    (resume), not left open in no session's room, told nothing."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            started, release = threading.Event(), threading.Event()
            real = logfiles.datasync

            def datasync(fd: int) -> None:
                if not started.is_set():
                    started.set()
                    release.wait(30)
                real(fd)

            monkeypatch.setattr(logfiles, "datasync", datasync)
            await agent.send({"type": "event", "id": 1, "event": token("a")})
            try:
                assert await asyncio.to_thread(started.wait, 10)
                deleting = asyncio.create_task(manager.delete_session(session_id))
                await eventually(lambda: manager.actors.get(session_id) is None)  # retiring
                deleting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await deleting
            finally:
                release.set()
            assert (await agent.recv_type("ack"))["seq"] == 1
            code, frames = await agent.closed()
            assert code == 1011 and frames[-1] == {
                "type": "closed",
                "reason": "session not deleted",
            }, (code, frames)
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1], body


async def test_a_close_racing_a_delete_that_fails_closes_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process close that comes while the store deletes the session (it no
    longer lists it then) waits for the outcome, as a hello does: the delete fails, so
    the close reaches the session that is still there, instead of failing with
    SessionNotFound about it; the store refuses it as it refuses appends (its undone
    delete is not durable until the next open), and the session stays as it was."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        started, release = held_directory_sync(monkeypatch, config.layout.sessions)
        deleting = asyncio.create_task(manager.delete_session(session_id))
        try:
            assert await asyncio.to_thread(started.wait, 10)
            closing = asyncio.create_task(manager.close_session(session_id))
            await asyncio.sleep(0)  # its first step: at the store, or waiting for the delete
            release.set()
            with pytest.raises(StorageError, match="not deleted"):
                await deleting
            with pytest.raises(AppendsSuspended, match="no close"):
                await closing
        finally:
            release.set()
            with contextlib.suppress(StorageError):
                await deleting
        status, body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 200 and body["metadata"]["state"] == "disconnected", body


async def test_a_stop_past_its_grace_ends_a_retiring_actor_without_hanging_the_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete asked the live actor to retire while it had an in-process append to
    store first (its log's sync held): the server stops, and cancels the actor past its
    grace before it got to the delete's stop. Its client still gets `closed` and 1012
    (not a dropped socket), the append its error, and the delete goes on once the
    store answers, instead of waiting for ever for connections nobody hands over."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    started, release = threading.Event(), threading.Event()
    real = logfiles.datasync

    def datasync(fd: int) -> None:
        if not started.is_set():
            started.set()
            release.wait(30)
        real(fd)

    async with embedded(config, shutdown_grace=0.5) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            monkeypatch.setattr(logfiles, "datasync", datasync)
            # In one step: the append, then the delete's stop, queued for the same turn.
            appending = asyncio.create_task(manager.append_event(session_id, AgentEvent.token("a")))
            deleting = asyncio.create_task(manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                await server.stop()
                code, frames = await agent.closed()
                assert code == 1012 and frames == [
                    {"type": "closed", "reason": "server restarting"}
                ], (code, frames)
                with pytest.raises(StorageError, match="server stopped"):
                    await appending
            finally:
                release.set()
            await asyncio.wait_for(deleting, 10)  # deleted, once the store is free again


async def test_a_hello_racing_a_delete_that_fails_is_still_checked_for_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auth, a hello for another user's session that comes while the store deletes
    it (no session to check the token against then) waits for the outcome: the delete
    fails, and the hello is refused 4403 (not your session), not welcomed to it."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config, auth_secret=SECRET) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, token=make_token("alice")) as (alice, welcome):
            session_id = welcome["session"]["id"]
            await alice.request({"type": "event", "id": 1, "event": token("a")}, "ack")
            started, release = held_directory_sync(monkeypatch, config.layout.sessions)
            deleting = asyncio.create_task(manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                async with open_peer(server, session_id) as bob:
                    await bob.send({"type": "hello", "token": make_token("bob")})
                    await eventually(
                        lambda: (
                            session_id in manager.actors._attaching or bob.ws.close_code is not None
                        )
                    )
                    release.set()
                    with pytest.raises(StorageError, match="not deleted"):
                        await deleting
                    code, frames = await bob.closed()  # a welcome, then no close, before
                    assert code == 4403 and frames == [], (code, frames)
            finally:
                release.set()
                with contextlib.suppress(StorageError):
                    await deleting


async def test_a_resume_replaying_when_a_delete_fails_is_told_1011_not_4404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumer is still taking its replay (it stopped reading, the socket is full)
    when the delete starts: the next page, read while the store does not list the
    session, is not found. It is closed once the delete has failed, with 1011 (resume),
    not 4404 (stop) at that read, and the events it got before have no gap."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            await publish_acked(agent, 120)  # 60 KB each: more than the socket holds
        url = stream_url(server, session_id)
        async with connect(url, max_size=None, max_queue=1, compression=None) as ws:
            resumer = Peer(ws)
            await resumer.send({"type": "hello", "last_seq": 0, "epoch": epoch})
            assert (await resumer.recv())["replay"] == 120
            await eventually(  # the server's writer waits for the socket, mid-replay
                lambda: any(c.transport.get_write_buffer_size() for c in server._open_connections)
            )
            started, release = held_directory_sync(monkeypatch, config.layout.sessions)
            deleting = asyncio.create_task(manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                (held,) = manager.actors._held[session_id].outboxes
                reading = asyncio.create_task(resumer.closed())  # the replay goes on
                await eventually(lambda: reading.done() or not held.replaying)
                release.set()
                with pytest.raises(StorageError, match="not deleted"):
                    await deleting
            finally:
                release.set()
                with contextlib.suppress(StorageError):
                    await deleting
            code, frames = await reading
            events = [frame["seq"] for frame in frames if frame["type"] == "event"]
            assert events == list(range(1, len(events) + 1)) and len(events) < 120, events
            assert code == 1011 and frames[-1] == {
                "type": "closed",
                "reason": "session not deleted",
            }, (code, frames[-1]["type"])


async def test_a_hello_whose_access_read_a_delete_overtook_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auth, bob's hello for alice's session finds no delete under way, reads the
    session for its access check, and a delete starts before that read: the store does
    not list the session then, so there was nothing to check the token against. The
    delete fails, the session is back, and bob is refused 4403 by the session itself,
    not welcomed to it."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config, auth_secret=SECRET) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, token=make_token("alice")) as (alice, welcome):
            session_id = welcome["session"]["id"]
            await alice.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        reading, read = asyncio.Event(), asyncio.Event()
        real_read = manager.stored_metadata

        async def stored_metadata(session_id: str, deadline: float | None = None) -> Any:
            reading.set()
            await read.wait()  # the delete starts meanwhile
            return await real_read(session_id, deadline)

        monkeypatch.setattr(manager, "stored_metadata", stored_metadata)
        started, release = held_directory_sync(monkeypatch, config.layout.sessions)
        async with open_peer(server, session_id) as bob:
            await bob.send({"type": "hello", "token": make_token("bob")})
            await reading.wait()
            deleting = asyncio.create_task(manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                read.set()  # the store does not list the session: None, nothing to check
                await eventually(lambda: session_id in manager.actors._attaching)  # attaching
                release.set()
                with pytest.raises(StorageError, match="not deleted"):
                    await deleting
                code, frames = await bob.closed()  # a welcome, then no close, before
                assert code == 4403 and frames == [], (code, frames)
            finally:
                read.set()
                release.set()
                with contextlib.suppress(StorageError):
                    await deleting


async def test_a_stop_during_a_delete_ends_the_hellos_waiting_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello waits for the outcome of its session's delete (held at its directory
    sync) when the server stops: it is closed with 1012 at once, as a hello waiting for
    a session's load is, and the stop waits neither its grace nor the hello's read
    deadline for it."""
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    async with embedded(config, shutdown_grace=60, store_read_timeout=60) as server:
        manager = server._manager
        assert manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request({"type": "event", "id": 1, "event": token("a")}, "ack")
        started, release = held_directory_sync(monkeypatch, config.layout.sessions)
        deleting = asyncio.create_task(manager.delete_session(session_id))
        try:
            assert await asyncio.to_thread(started.wait, 10)
            async with open_peer(server, session_id) as peer:
                await peer.send({"type": "hello", "last_seq": 0})
                await eventually(lambda: session_id in manager.actors._attaching)
                await asyncio.wait_for(server.stop(), 10)  # not 60 s
                code, frames = await peer.closed()
                assert code == 1012 and frames == [], (code, frames)
        finally:
            release.set()
            with contextlib.suppress(StorageError):
                await deleting
