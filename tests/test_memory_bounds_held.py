"""What is let go once handled, and what is charged while held: viewers that come and
go leave no budget behind; a request waiting for room in a session's inbox is weighed
until it goes in (or its wait is cancelled); a big frame, a store's last write and the
Python client's last event stay nowhere once done with (tracemalloc).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc
from pathlib import Path
from typing import Any, Literal

import pytest

from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.client import StoredEvent as ClientStoredEvent
from bamboo_session.protocol.client.tasks import stopped
from bamboo_session.protocol.models import Token
from tests.instances import eventually as eventually_async
from tests.memory_support import KIB, MIB
from tests.server_process import ServerProcess
from tests.stalled_disks_support import write_lock_held
from tests.support import attach, get, run_server, token
from tests.test_server_lifecycle import eventually


async def test_viewers_that_come_and_go_leave_no_budget_behind() -> None:
    """What a departing viewer's outbox is charged in the moment between its connection
    ending and the actor taking it out of the room is given back: with no viewer left,
    the budget holds what the ring holds and nothing more."""
    async with run_server(memory_budget=64 * MIB) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            viewers_done = asyncio.Event()

            async def publish() -> None:
                n = 0
                while not viewers_done.is_set():
                    frame = {"type": "event", "id": n, "event": token("t" * 20_000)}
                    await agent.request(frame, "ack")
                    n += 1
                    await asyncio.sleep(0.005)

            async def come_and_go() -> None:
                for _ in range(15):
                    async with attach(server, session_id) as (viewer, _):
                        await viewer.recv_type("event")

            async def viewers() -> None:
                await asyncio.gather(*(come_and_go() for _ in range(20)))
                viewers_done.set()

            await asyncio.gather(publish(), viewers())
        await asyncio.sleep(0.5)
        rings = sum(actor.room.ring_bytes for actor in server.manager.actors)
        assert server.manager.budget.used == rings


async def buffered_bytes(server: Any) -> int:
    """``bamboo_buffered_bytes`` as /metrics says: what the memory budget holds."""
    metrics = (await get(server, "/metrics"))[1]
    line = next(x for x in metrics.splitlines() if x.startswith("bamboo_buffered_bytes "))
    return int(float(line.split()[1]))


async def test_a_request_waiting_for_room_in_the_inbox_is_weighed_until_it_goes_in(
    tmp_path: Path,
) -> None:
    """A session whose store is stuck (another process holds SQLite's write lock) has a
    full inbox: its publisher's reader holds the next request, decoded, waiting for
    room. That request is charged to the memory budget while it waits (before, it was
    held by no count), still once its connection has closed, and given back as it
    goes into the inbox; once everything is stored the budget holds the ring alone.
    The first append comes from another connection, whose reader handles it itself
    (the actor was idle: SessionActor.append_now) and waits for the lock; the
    publisher's reader reads on, its requests going to the inbox."""
    path = tmp_path / "bamboo.db"
    size = 300 * KIB
    async with run_server(store=f"sqlite://{path}", inbox_limit=1) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            actor = server.manager.live_actor(session_id)
            assert actor is not None
            async with (
                attach(server, session_id, role="agent") as (first, _),
                write_lock_held(path),
            ):
                # The first is taken (its append waits for the lock), the second queued.
                await first.send({"type": "event", "id": 1, "event": token("x" * size)})
                await eventually(lambda: actor.stepping is not None)
                await agent.send({"type": "event", "id": 2, "event": token("x" * size)})
                await eventually(lambda: len(actor.inbox) == 1)
                before = await buffered_bytes(server)
                await agent.send({"type": "event", "id": 3, "event": token("y" * size)})
                await eventually(lambda: actor.inbox._waiters)  # the reader waits for room
                assert len(actor.inbox) == 1
                assert await buffered_bytes(server) >= before + size
                await agent.close()  # the request still waits, in memory
                await asyncio.sleep(0.2)
                assert await buffered_bytes(server) >= before + size

        async def all_stored() -> bool:
            stored = await server.manager.read_events(session_id)
            return [e.event.content[0] for e in stored] == ["x", "x", "y"]

        await eventually_async(all_stored, 15)
        await eventually(lambda: not actor.inbox.bytes and not actor.inbox._waiters)
        rings = sum(live.room.ring_bytes for live in server.manager.actors)
        assert server.manager.budget.used == rings
        assert await buffered_bytes(server) == rings


async def test_a_request_whose_wait_for_room_is_cancelled_gives_its_weight_back() -> None:
    """A reader stopped while its request waits (the server's stop cancels it): the
    request is dropped, and so is its charge."""
    async with run_server() as server, attach(server) as (_peer, welcome):
        actor = server.manager.live_actor(welcome["session"]["id"])
        assert actor is not None
        before = server.manager.budget.used
        never = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(actor.inbox.budget.charged_while(300 * KIB, never))
        await asyncio.sleep(0.05)
        assert server.manager.budget.used == before + 300 * KIB
        await stopped(waiting)
        assert server.manager.budget.used == before


@pytest.mark.parametrize("msgpack", [False, True])
async def test_a_big_frame_is_let_go_once_handled(msgpack: bool) -> None:
    """Peers that each sent one big frame and went quiet: nothing of those frames stays
    (tracemalloc), neither with websockets' parser, which kept the last frame it parsed,
    nor with the connection's reader, which kept the last frame it read, each until the
    next frame, however long that took. The frames are refused (an unknown event type),
    so that no store or ring keeps anything of them either."""
    peers_count, size = 10, 400_000
    tracemalloc.start()
    try:
        async with run_server(store="memory://") as server:
            async with contextlib.AsyncExitStack() as stack:
                peers = []
                for _ in range(peers_count):
                    peer, _ = await stack.enter_async_context(
                        attach(server, role="agent", msgpack=msgpack)
                    )
                    peers.append(peer)
                frame = {"type": "event", "id": 1, "event": {"type": "nope", "pad": "x" * size}}
                before = tracemalloc.get_traced_memory()[0]
                for peer in peers:
                    assert (await peer.request(frame, "error"))["code"] == "bad_request"
                await asyncio.sleep(0.1)
                held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Before, two copies of each frame stayed: 8 MB.
    assert held < 1_000_000, f"{held} bytes held after {peers_count} frames of {size}"


@pytest.mark.parametrize("store", ["jsonl", "sqlite"])
async def test_a_store_lets_go_of_its_last_write_once_done(tmp_path: Path, store: str) -> None:
    """Publishers that each sent one big event at once and went quiet: nothing of those
    events stays (tracemalloc) once they are stored. The stores' writers kept their last
    group commit (every event of it, decoded, and its encoded lines) in a local of their
    loop, and the JSONL writer's thread kept the call that wrote it, until the next write
    came, however long that took: counted by no bound, and as big as one write of every
    session at once. The ring is too small for the events, so that it keeps none."""
    peers_count, size = 10, 900_000
    url = f"jsonl://{tmp_path}/j" if store == "jsonl" else f"sqlite://{tmp_path}/s.db"
    tracemalloc.start()
    try:
        async with run_server(store=url, ring_bytes=64 * KIB) as server:
            async with contextlib.AsyncExitStack() as stack:
                peers = []
                for _ in range(peers_count):
                    peer, _ = await stack.enter_async_context(attach(server, role="agent"))
                    peers.append(peer)
                frame = {"type": "event", "id": 1, "event": token("x" * size)}
                await asyncio.sleep(0.1)
                before = tracemalloc.get_traced_memory()[0]
                for peer in peers:
                    await peer.send(frame)
                for peer in peers:
                    assert "seq" in await peer.recv_type("ack")
                await asyncio.sleep(0.2)
                held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Before, the last group commit stayed: at least one event, twice or three times.
    assert held < 1_000_000, f"{held} bytes held after {peers_count} events of {size}"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_the_python_client_lets_go_of_a_big_event_once_taken(
    tmp_path: Path, codec: Literal["json", "msgpack"]
) -> None:
    """A client that received one big event, whose application took it from events()
    and dropped it, then waits for the next: nothing of that event stays with the client
    (tracemalloc, the server in a process of its own). Its reader kept the frame it read
    last in a local of its loop, and websockets' parser the frame it parsed last, each
    until the next frame came, however long the quiet lasted: outside the client's
    ``max_queued_bytes``, which counts only what events() has not taken."""
    size = 900_000
    with ServerProcess(tmp_path / "data", tmp_path / "server.log") as server:
        base_url = f"ws://127.0.0.1:{server.port}"
        publisher = await BambooClient.connect(base_url, create=True, receive_events=False)
        session_id = publisher.session_id
        tracemalloc.start()
        try:
            viewer = await BambooClient.connect(base_url, session_id, codec=codec)
            async with viewer:
                await viewer.ping()
                gc.collect()
                before = tracemalloc.get_traced_memory()[0]
                # The publisher stays: its leaving would be the viewer's next frame.
                seq = await publisher.publish(Token("x" * size))
                async with asyncio.timeout(10):
                    async for item in viewer.events():
                        assert isinstance(item, ClientStoredEvent) and item.seq == seq
                        assert len(getattr(item.event, "content", "")) == size
                        break
                del item
                await asyncio.sleep(0.2)  # the client waits for its next frame
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
                assert viewer.queued_bytes == 0 and viewer.connected
        finally:
            tracemalloc.stop()
            await publisher.close()
    # Before, two copies stayed: the parser's frame and the reader's message, 1.8 MB
    # (900 KB with either half of the fix undone).
    assert held < 300_000, f"{held} bytes held after an event of {size} taken and dropped"
