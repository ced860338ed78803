"""What a WebSocket client sees of a session whose delete the JSONL store undid (no
WAL, ``fsync`` mode: the delete's directory sync failed, and the rename back is not
known durable either, ``persistence/jsonl/lifecycle.py``): its connections are closed
with 1011 (resume), never 4404 (stop), and with 1012 when the server stops before the
delete's outcome, or 1011 when the delete is cancelled; an attach or a close that
raced the delete waits for its outcome (a hello within its read deadline, its token
checked against the session it finds then), and a stop ends such a hello at once; the
session is readable, and every append is refused with ``internal`` saying that only a
restart lets it in; the refusal holds for an actor created after the failed delete,
and after the restart the same append, with the same key, is taken."""

from __future__ import annotations

import asyncio
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
from bamboo_session.persistence.jsonl import deletes
from bamboo_session.protocol.models import AgentEvent
from tests.auth_support import SECRET, make_token
from tests.held_delete_support import EVENT_A, closed_with, embedded, held_log_sync, scene
from tests.instances import eventually
from tests.support import Peer, attach, get, open_peer, stream_url, token
from tests.test_jsonl_sync_failures import failing_directory_sync, tokens
from tests.test_server_shutdown import publish_acked

NOT_DELETED = {"type": "closed", "reason": "session not deleted"}
RESTARTING = {"type": "closed", "reason": "server restarting"}


async def test_appends_after_an_undone_delete_wait_for_the_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = JsonlStorageConfig(tmp_path).with_wal(enabled=False)
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
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
    failing = failing_directory_sync(monkeypatch, deletes, config.layout.sessions)
    async with embedded(config) as server:
        assert server._manager is not None
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            async with attach(server, session_id) as (viewer, _welcome):
                await agent.request(EVENT_A, "ack")
                failing["left"] = 1
                with pytest.raises(StorageError, match="not deleted"):
                    await server._manager.delete_session(session_id)
                for peer in (agent, viewer):
                    assert (await closed_with(peer, 1011))[-1] == NOT_DELETED
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1], body
        async with attach(server, session_id, last_seq=0, epoch=epoch) as (viewer, welcome):
            assert welcome["resumed"] is True and welcome["replay"] == 1, welcome
            assert (await viewer.recv_type("event"))["event"] == token("a")
            await server._manager.delete_session(session_id)  # the sync holds this time
            frames = await closed_with(viewer, 4404)
            assert frames[-1] == {"type": "closed", "reason": "session deleted"}
        status, _body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 404


async def test_an_attach_racing_a_delete_that_fails_is_welcomed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello that comes while the store is deleting the session (it no longer lists
    it then) waits for the outcome: the delete fails, so it is welcomed to the session
    with its events, not told 4404."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id) as deleting:
            assert await s.manager.storage.get_metadata(session_id) is None  # mid-delete
            async with open_peer(s.server, session_id) as peer:
                await peer.send({"type": "hello", "last_seq": 0})
                await s.hello_attaching(session_id)
                await deleting.fails()
                welcome = await peer.recv()
                assert welcome["type"] == "welcome" and welcome["last_seq"] == 1, welcome
                assert (await peer.recv_type("event"))["event"] == token("a")


async def test_a_stop_during_a_delete_tells_its_held_clients_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server stops while the store deletes the session (held at its directory
    sync): its clients, whose closes wait for the delete's outcome, get `closed`
    "server restarting" and 1012 as every other client does, not a dropped socket
    (1006) once the grace has run out; the outcome known later changes nothing."""
    async with scene(tmp_path, monkeypatch) as s:
        async with attach(s.server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await agent.request(EVENT_A, "ack")
            async with s.delete_held(session_id):
                stopping = asyncio.create_task(s.server.stop())
                assert await closed_with(agent, 1012) == [RESTARTING]
                await stopping


async def test_a_delete_cancelled_while_the_session_stores_an_append_resumes_its_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete is cancelled while the live actor, which it asked to retire, still
    stores an append (its log's sync held): the actor hands its connections over once
    the append is acked, after the delete gave up, and they are closed with 1011
    (resume), not left open in no session's room, told nothing."""
    async with scene(tmp_path, monkeypatch) as s:
        async with attach(s.server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            started, release = held_log_sync(monkeypatch)
            await agent.send(EVENT_A)
            try:
                assert await asyncio.to_thread(started.wait, 10)
                deleting = asyncio.create_task(s.manager.delete_session(session_id))
                await eventually(lambda: s.manager.actors.get(session_id) is None)  # retiring
                deleting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await deleting
            finally:
                release.set()
            assert (await agent.recv_type("ack"))["seq"] == 1
            assert (await closed_with(agent, 1011))[-1] == NOT_DELETED
        assert await s.events(session_id) == [1]


async def test_a_close_racing_a_delete_that_fails_closes_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An in-process close that comes while the store deletes the session (it no
    longer lists it then) waits for the outcome, as a hello does: the delete fails, so
    the close reaches the session that is still there, instead of failing with
    SessionNotFound about it; the store refuses it as it refuses appends (its undone
    delete is not durable until the next open), and the session stays as it was."""
    async with scene(tmp_path, monkeypatch) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id) as deleting:
            closing = asyncio.create_task(s.manager.close_session(session_id))
            await asyncio.sleep(0)  # its first step: at the store, or waiting for the delete
            await deleting.fails()
            with pytest.raises(AppendsSuspended, match="no close"):
                await closing
        status, body = await get(s.server, f"/api/v1/sessions/{session_id}")
        assert status == 200 and body["metadata"]["state"] == "disconnected", body


async def test_a_stop_past_its_grace_ends_a_retiring_actor_without_hanging_the_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete asked the live actor to retire while it had an in-process append to
    store first (its log's sync held): the server stops, and cancels the actor past its
    grace before it got to the delete's stop. Its client still gets `closed` and 1012
    (not a dropped socket), the append its error, and the delete goes on once the
    store answers, instead of waiting for ever for connections nobody hands over."""
    async with scene(tmp_path, monkeypatch, shutdown_grace=0.5) as s:
        async with attach(s.server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            started, release = held_log_sync(monkeypatch)
            # In one step: the append, then the delete's stop, queued for the same turn.
            appending = asyncio.create_task(
                s.manager.append_event(session_id, AgentEvent.token("a"))
            )
            deleting = asyncio.create_task(s.manager.delete_session(session_id))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                await s.server.stop()
                assert await closed_with(agent, 1012) == [RESTARTING]
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
    async with scene(tmp_path, monkeypatch, auth_secret=SECRET) as s:
        async with attach(s.server, token=make_token("alice")) as (alice, welcome):
            session_id = welcome["session"]["id"]
            await alice.request(EVENT_A, "ack")
            async with s.delete_held(session_id) as deleting:
                async with open_peer(s.server, session_id) as bob:
                    await bob.send({"type": "hello", "token": make_token("bob")})
                    await eventually(
                        lambda: (
                            session_id in s.manager.actors._attaching
                            or bob.ws.close_code is not None
                        )
                    )
                    await deleting.fails()
                    # A welcome, then no close, before.
                    assert await closed_with(bob, 4403) == []


async def test_a_resume_replaying_when_a_delete_fails_is_told_1011_not_4404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumer is still taking its replay (it stopped reading, the socket is full)
    when the delete starts: the next page, read while the store does not list the
    session, is not found. It is closed once the delete has failed, with 1011 (resume),
    not 4404 (stop) at that read, and the events it got before have no gap."""
    async with scene(tmp_path, monkeypatch) as s:
        async with attach(s.server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            await publish_acked(agent, 120)  # 60 KB each: more than the socket holds
        url = stream_url(s.server, session_id)
        async with connect(url, max_size=None, max_queue=1, compression=None) as ws:
            resumer = Peer(ws)
            await resumer.send({"type": "hello", "last_seq": 0, "epoch": epoch})
            assert (await resumer.recv())["replay"] == 120
            await eventually(  # the server's writer waits for the socket, mid-replay
                lambda: any(c.transport.get_write_buffer_size() for c in s.server._open_connections)
            )
            async with s.delete_held(session_id) as deleting:
                (held,) = s.manager.actors.holds.holding[session_id].connections.outboxes
                reading = asyncio.create_task(resumer.closed())  # the replay goes on
                await eventually(lambda: reading.done() or not held.replaying)
                await deleting.fails()
            code, frames = await reading
            events = [frame["seq"] for frame in frames if frame["type"] == "event"]
            assert events == list(range(1, len(events) + 1)) and len(events) < 120, events
            assert code == 1011 and frames[-1] == NOT_DELETED, (code, frames[-1]["type"])


async def test_a_hello_whose_access_read_a_delete_overtook_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under auth, bob's hello for alice's session finds no delete under way, reads the
    session for its access check, and a delete starts before that read: the store does
    not list the session then, so there was nothing to check the token against. The
    delete fails, the session is back, and bob is refused 4403 by the session itself,
    not welcomed to it."""
    async with scene(tmp_path, monkeypatch, auth_secret=SECRET) as s:
        session_id = await s.session_with_an_event(token=make_token("alice"))
        reading, read = asyncio.Event(), asyncio.Event()
        real_read = s.manager.stored_metadata

        async def stored_metadata(session_id: str, deadline: float | None = None) -> Any:
            reading.set()
            await read.wait()  # the delete starts meanwhile
            return await real_read(session_id, deadline)

        monkeypatch.setattr(s.manager, "stored_metadata", stored_metadata)
        async with open_peer(s.server, session_id) as bob:
            await bob.send({"type": "hello", "token": make_token("bob")})
            await reading.wait()
            try:
                async with s.delete_held(session_id) as deleting:
                    read.set()  # the store does not list the session: None, nothing to check
                    await s.hello_attaching(session_id)
                    await deleting.fails()
                    # A welcome, then no close, before.
                    assert await closed_with(bob, 4403) == []
            finally:
                read.set()


async def test_a_stop_during_a_delete_ends_the_hellos_waiting_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello waits for the outcome of its session's delete (held at its directory
    sync) when the server stops: it is closed with 1012 at once, as a hello waiting for
    a session's load is, and the stop waits neither its grace nor the hello's read
    deadline for it."""
    async with scene(tmp_path, monkeypatch, shutdown_grace=60, store_read_timeout=60) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id), open_peer(s.server, session_id) as peer:
            await peer.send({"type": "hello", "last_seq": 0})
            await s.hello_attaching(session_id)
            await asyncio.wait_for(s.server.stop(), 10)  # not 60 s
            assert await closed_with(peer, 1012) == []


async def test_a_hello_waits_for_a_delete_no_longer_than_its_read_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hello to a session whose delete the store holds (its directory sync) waits for
    the outcome within its read deadline only: then 1011 ``storage unavailable`` (resume
    later), with or without ``create``, and nothing created, the delete's caller gone
    or not; the delete fails, and a hello after it is welcomed to the session as it
    was."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=0.3) as s:
        session_id = await s.session_with_an_event()
        async with s.delete_held(session_id) as deleting:
            for create in (False, True):
                async with open_peer(s.server, session_id) as peer:
                    await peer.send({"type": "hello", "create": create})
                    assert await closed_with(peer, 1011) == []
                    assert peer.ws.close_reason == "storage unavailable"
            await deleting.given_up()  # by the first hello's deadline, which came later
            deleting.release.set()
            await s.delete_ended(session_id)
        async with attach(s.server, session_id) as (_viewer, welcome):
            assert welcome["session"]["last_seq"] == 1, welcome
