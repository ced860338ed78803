"""A lone append handled in its sender's task (SessionActor.append_now), on a store
whose appends are in process: real servers and WebSocket peers, with the in-memory
store's appends held at a chosen moment (``GatedAppends``), as a slow disk holds them.

While one is in the store, the actor's task takes nothing: what others send waits, and
is stored and acknowledged after it, in order. Frames queued behind a lone one go to
the store together. A publisher gone mid-append leaves its event stored once, seen
once by a resume and a viewer, and its retry a duplicate. A stop past its grace ends
an append held in a peer's task as it ends one held in the actor's own. A store whose
appends are network round trips (Redis) never takes this path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.persistence.capabilities import AppendsInProcess
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.server.actor import SessionActor
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.gated_appends import GatedAppends
from tests.instances import eventually
from tests.support import Peer, attach, token


async def started(tmp_path: Path, storage: MemoryStorage, **overrides: Any) -> BambooServer:
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), rate_limit=0)
    server = BambooServer(config.replace(**overrides), storage)
    await server.start()
    return server


def live_actor(server: BambooServer, session_id: str) -> SessionActor:
    actor = server.manager.live_actor(session_id)
    assert actor is not None
    return actor


async def held_in_a_peers_task(storage: GatedAppends, actor: SessionActor) -> None:
    """Waits until an append is held in the store, by a peer's reader (not the actor)."""
    await eventually(lambda: storage.in_store == 1)
    assert actor.stepping is not None and actor.stepping is not actor.task


async def event_seqs(peer: Peer, count: int) -> list[int]:
    return [(await peer.recv_type("event"))["seq"] for _ in range(count)]


async def test_what_others_send_meanwhile_is_stored_after_it_in_order(tmp_path: Path) -> None:
    storage = GatedAppends()
    server = await started(tmp_path, storage)
    try:
        async with (
            attach(server, "s", create=True, role="agent") as (first, _),
            attach(server, "s", role="agent") as (second, _),
            attach(server, "s") as (viewer, _),
        ):
            actor = live_actor(server, "s")
            await first.recv_type("presence")
            await first.recv_type("presence")
            await second.recv_type("presence")
            storage.gate = gate = asyncio.Semaphore(0)
            await first.send({"type": "event", "id": "a", "event": token("a"), "key": "ka"})
            await held_in_a_peers_task(storage, actor)
            for i in range(3):
                await second.send({"type": "event", "id": i, "event": token(f"b{i}")})
            await eventually(lambda: len(actor.inbox) == 3)
            await asyncio.sleep(0.1)
            # The actor's task took none of them: one append at a time per session.
            assert storage.in_store == 1 and storage.sizes == [1]
            storage.gate = None
            gate.release()
            assert (await first.recv_type("ack"))["seq"] == 1
            assert [(await second.recv_type("ack"))["seq"] for _ in range(3)] == [2, 3, 4]
            assert storage.sizes == [1, 3]  # the three together, after it
            assert await event_seqs(viewer, 4) == [1, 2, 3, 4]
            # Nothing is left owed: the next lone append takes the same path again.
            await first.send({"type": "event", "id": "c", "event": token("c")})
            assert (await first.recv_type("ack"))["seq"] == 5
            assert await event_seqs(viewer, 1) == [5]
            assert actor.stepping is None and storage.sizes == [1, 3, 1]
    finally:
        await server.stop()


async def test_frames_queued_behind_a_lone_one_go_to_the_store_together(tmp_path: Path) -> None:
    storage = GatedAppends()
    server = await started(tmp_path, storage, max_queue=64)
    try:
        async with attach(server, "q", create=True, role="agent") as (agent, _):
            actor = live_actor(server, "q")
            storage.gate = gate = asyncio.Semaphore(0)
            await agent.send({"type": "event", "id": 0, "event": token("e0")})
            await held_in_a_peers_task(storage, actor)
            for i in range(1, 9):
                await agent.send({"type": "event", "id": i, "event": token(f"e{i}")})
            [connection] = server._open_connections
            await eventually(lambda: len(connection.recv_messages.frames.queue) == 8)
            storage.gate = None
            gate.release()
            assert [(await agent.recv_type("ack"))["seq"] for _ in range(9)] == list(range(1, 10))
            # The first alone, in the reader's task; the eight read then in one append.
            assert storage.sizes == [1, 8]
    finally:
        await server.stop()


async def test_a_publisher_gone_mid_append_leaves_its_event_stored_once(tmp_path: Path) -> None:
    storage = GatedAppends()
    server = await started(tmp_path, storage)
    try:
        async with attach(server, "g", create=True) as (viewer, welcome):
            actor = live_actor(server, "g")
            frame = {"type": "event", "id": 1, "event": token("once"), "key": "k1"}
            async with attach(server, "g", role="agent") as (agent, _):
                storage.gate = gate = asyncio.Semaphore(0)
                await agent.send(frame)
                await held_in_a_peers_task(storage, actor)
            # Its peer is gone; the store takes the append only now.
            storage.gate = None
            gate.release()
            assert await event_seqs(viewer, 1) == [1]
            await eventually(lambda: actor.stepping is None and len(actor.room.outboxes) == 1)
            epoch = welcome["epoch"]
            async with attach(server, "g", role="agent", last_seq=0, epoch=epoch) as (again, back):
                assert back["resumed"] and back["replay"] == 1
                assert await event_seqs(again, 1) == [1]
                ack = await again.request(frame, "ack")  # its retry, with the same key
                assert (ack["seq"], ack["duplicate"]) == (1, True)
                await again.send({"type": "event", "id": 2, "event": token("next")})
                assert (await again.recv_type("ack"))["seq"] == 2
            assert await event_seqs(viewer, 1) == [2]  # 1 came once, and no copy of it
    finally:
        await server.stop()


async def test_a_stop_past_its_grace_ends_an_append_held_in_a_peers_task(tmp_path: Path) -> None:
    """As it ends one held in the actor's task: the peer is told 1012, its handler
    ends, and the append queued behind it goes to the store only once it has ended."""
    storage = GatedAppends()
    server = await started(tmp_path, storage, shutdown_grace=0.2)
    async with (
        attach(server, "t", create=True, role="agent") as (agent, _),
        attach(server, "t", role="agent") as (other, _),
    ):
        actor = live_actor(server, "t")
        storage.gate = gate = asyncio.Semaphore(0)  # a store that does not answer
        await agent.send({"type": "event", "id": 1, "event": token("held")})
        await held_in_a_peers_task(storage, actor)
        await other.send({"type": "event", "id": 1, "event": token("queued")})
        await eventually(lambda: len(actor.inbox) == 1)
        with capture_logs() as logs:
            await asyncio.wait_for(server.stop(), 10.0)
        for peer in (agent, other):
            code, frames = await peer.closed()
            assert code == 1012 and [f["type"] for f in frames if f["type"] != "presence"] == [
                "closed"
            ]
        assert storage.most_in_store == 1  # never the queued one beside the held one
        storage.gate = None
        gate.release()  # the queued one, which the stop gave up on
    await eventually(lambda: storage.in_store == 0)
    assert actor.stepping is None and actor.finished
    # Every handler ended within the stop: none was left waiting on the store.
    assert "connection handlers still running after the grace period" not in [
        line["event"] for line in logs
    ]


def test_only_stores_whose_appends_are_in_process_take_the_path() -> None:
    assert isinstance(MemoryStorage(), AppendsInProcess)
    assert not hasattr(RedisStorage, "appends_in_process")
