"""Memory is bounded in bytes, not only in counts: send queues, replay rings, inboxes
and their sum (the process's memory budget), on their own and over real connections;
pages are bounded in bytes; a ring holds what it counts, measured with tracemalloc.
What reading costs is in test_memory_bounds_reads.py, HTTP answers nobody reads in
test_memory_bounds_http.py, what is let go once handled in test_memory_bounds_held.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.frames import Pong
from bamboo_session.protocol.models import StoredEvent, Token
from bamboo_session.server.budget import MemoryBudget
from bamboo_session.server.commands import Append
from bamboo_session.server.inbox import Inbox
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import CloseRequest, Outbox
from bamboo_session.server.room import RING_BYTES, SessionRoom
from tests.memory_support import KIB, MIB
from tests.replay_support import gauge
from tests.support import attach, get, run_server, token
from tests.test_server_lifecycle import eventually


def event(seq: int, size: int) -> Outbound:
    return Outbound.for_event(StoredEvent(seq, _ts(), Token("x" * size)))


def _ts() -> datetime:
    return datetime.now(UTC)


# -- the buffers on their own ----------------------------------------------------------


async def test_a_send_queue_over_its_bytes_overflows_though_few_frames() -> None:
    budget = MemoryBudget(0)
    outbox = Outbox("c", "client", limit=1000, max_bytes=100 * KIB, budget=budget)
    outbox.push(event(1, 200 * KIB))  # one frame always fits in an empty queue
    assert outbox.closing is None and budget.used > 200 * KIB
    outbox.push(event(2, 10))
    outbox.push(event(3, 200 * KIB))
    assert outbox.closing is not None and outbox.closing.overflow
    assert isinstance(await outbox.get(), CloseRequest)
    assert budget.used == 0 and outbox.bytes == 0


async def test_past_the_process_budget_a_backed_up_queue_closes_a_keeping_up_one_stays() -> None:
    budget = MemoryBudget(1 * MIB)
    backed_up = Outbox("slow", "client", 10_000, max_bytes=4 * MIB, budget=budget)
    keeping_up = Outbox("fast", "client", 10_000, max_bytes=4 * MIB, budget=budget)
    for seq in range(1, 20):
        frame = event(seq, 100 * KIB)
        backed_up.push(frame)
        keeping_up.push(frame)
        assert isinstance(await keeping_up.get(), Outbound)  # its writer keeps up
    assert backed_up.closing is not None and backed_up.closing.overflow
    assert keeping_up.closing is None
    assert budget.used == 0


async def test_sent_frames_release_their_bytes() -> None:
    budget = MemoryBudget(0)
    outbox = Outbox("c", "client", limit=100, max_bytes=MIB, budget=budget)
    for i in range(10):
        outbox.push(Outbound(Pong(id=i)))
    assert budget.used == outbox.bytes > 0
    first = await outbox.get()
    assert isinstance(first, Outbound)
    outbox.take_frames(first, 100)
    assert budget.used == outbox.bytes == 0
    outbox.push(event(1, 1000))
    outbox.discard()
    assert budget.used == 0


def test_the_ring_keeps_what_its_bytes_allow_and_nothing_past_the_budget() -> None:
    budget = MemoryBudget(0)
    room = SessionRoom("e", 0, ring_size=1000, ring_max_bytes=300 * KIB, budget=budget)
    room.deliver([StoredEvent(seq, _ts(), Token("x" * 100 * KIB)) for seq in range(1, 11)])
    assert room.ring is not None and [o.seq for o in room.ring] == [9, 10]
    assert room.ring_page(8, 10) is not None and room.ring_page(7, 10) is None
    assert budget.used == room.ring_bytes <= 300 * KIB
    room.drop_ring()
    assert budget.used == 0
    tight = MemoryBudget(50 * KIB)
    poor = SessionRoom("e", 0, ring_size=1000, ring_max_bytes=MIB, budget=tight)
    poor.deliver([StoredEvent(1, _ts(), Token("x" * 100 * KIB))])
    assert poor.ring is None and tight.used == 0  # replays will read the store


def test_the_ring_counts_the_frames_its_events_keep() -> None:
    budget = MemoryBudget(0)
    room = SessionRoom("e", 0, ring_size=1000, ring_max_bytes=300 * KIB, budget=budget)
    room.deliver([StoredEvent(seq, _ts(), Token("x" * 40 * KIB)) for seq in range(1, 6)])
    assert room.ring is not None and [o.seq for o in room.ring] == [1, 2, 3, 4, 5]
    first = room.ring[0]
    for codec in (JSON, MSGPACK):  # sent to peers of each codec: each frame is kept
        for out in list(room.ring or ()):
            out.framed(codec)
    kept = list(room.ring or ())
    # a frame's bytes object, header included; and the ring's deque
    held = RING_BYTES + sum(
        o.event_size + sys.getsizeof(o.framed(JSON)) + sys.getsizeof(o.framed(MSGPACK))
        for o in kept
    )
    assert room.ring_bytes == budget.used == held <= 300 * KIB
    assert [o.seq for o in kept] == [4, 5]  # the oldest went, to stay within its bytes
    first.framed(MSGPACK)  # framed after it left the ring: its sender's, not counted
    assert budget.used == held
    room.drop_ring()
    assert budget.used == 0


async def test_the_inbox_is_bounded_in_bytes_but_always_takes_one() -> None:
    budget = MemoryBudget(0)
    inbox = Inbox(limit=1000, max_bytes=100 * KIB, budget=budget)
    assert inbox.has_room()
    inbox.append(Append(Token("a"), size=150 * KIB))
    assert not inbox.has_room() and budget.used == 150 * KIB
    waiter = asyncio.create_task(inbox.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    batch = inbox.take_batch(10)
    assert len(batch) == 1
    await asyncio.sleep(0)
    assert not waiter.done()  # a batch being handled is still in memory
    inbox.finished(batch)
    await asyncio.wait_for(waiter, 1)
    assert budget.used == 0 and inbox.bytes == 0


# -- over real connections -------------------------------------------------------------


async def test_a_slow_reader_of_large_events_is_closed_by_bytes_not_frames() -> None:
    config = {"send_queue_frames": 100_000, "send_queue_bytes": MIB, "durability": "os"}
    async with run_server(**config, rate_limit_bytes=0) as server:  # big events, fast
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            async with attach(server, session_id) as (slow, _):
                await agent.recv_type("presence")
                # Up to 400 x 60 KB: more than loopback's socket buffers hold, so the
                # slow reader's queue backs up past 1 MiB, at a few hundred frames at
                # most. Once it is dropped, it reads at once: the server waits
                # --close-timeout (5 s) for its close reply before it resets the socket,
                # which throws away the unread frames and the 4429 behind them (1006).
                for i in range(400):
                    frame = {"type": "event", "id": i, "event": token("y" * 60_000)}
                    await agent.request(frame, "ack")
                    if gauge(server, "bamboo_send_queue_drops_total"):
                        break
                code, _ = await slow.closed(timeout=20)
                assert code == 4429
        assert gauge(server, "bamboo_send_queue_drops_total") == 1
        # Once everyone has left, what is held is the parked session's ring, no more.
        actor = server.manager.live_actor(session_id)
        assert actor is not None
        await eventually(lambda: not actor.room.outboxes)
        assert server.manager.budget.used == actor.room.ring_bytes <= MIB


async def test_pages_are_bounded_in_bytes_and_always_hold_one() -> None:
    async with run_server(max_page_bytes=700_000) as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            for i in range(6):
                message = {"role": "user", "content": f"{i}" + "m" * 300_000}
                await peer.request({"type": "message", "id": i, "message": message}, "ack")
            history = await peer.request({"type": "history", "id": "h", "limit": 100}, "history")
            assert [m["content"][0] for m in history["messages"]] == ["4", "5"]
            assert history["has_more"] is True
            events = await peer.request({"type": "events", "id": "e", "limit": 100}, "events")
            assert [e["seq"] for e in events["events"]] == [1, 2]
            assert events["last_seq"] == 6
        async with run_server(max_page_bytes=1024) as small:
            async with attach(small) as (peer, _):
                message = {"role": "user", "content": "z" * 5000}
                await peer.request({"type": "message", "id": 1, "message": message}, "ack")
                history = await peer.request({"type": "history", "id": "h"}, "history")
                assert len(history["messages"]) == 1 and history["has_more"] is False
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events?limit=100")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1, 2]


async def test_past_the_memory_budget_replay_reads_the_store() -> None:
    async with run_server(memory_budget=16 * KIB) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            async with attach(server, session_id) as (viewer, _):
                await agent.recv_type("presence")
                for i in range(5):
                    frame = {"type": "event", "id": i, "event": token(f"{i}" + "r" * 40_000)}
                    await agent.request(frame, "ack")
                    await viewer.recv_type("event")
                actor = server.manager.live_actor(session_id)
                assert actor is not None and actor.room.ring is None
                async with attach(server, session_id, last_seq=1, epoch=epoch) as (late, w):
                    assert w["resumed"] and w["replay"] == 4
                    seqs = [(await late.recv_type("event"))["seq"] for _ in range(4)]
                    assert seqs == [2, 3, 4, 5]


async def test_dropping_a_ring_frees_no_more_than_it_counted() -> None:
    """What a session's ring keeps once its events went to peers of both codecs, as
    tracemalloc sees it. The memory store keeps every stored event itself, so what
    dropping the ring frees is what the ring alone holds: its frames and their objects."""
    tracemalloc.start()
    try:
        async with run_server(store="memory://", ring_size=10_000, ring_bytes=64 * MIB) as server:
            async with contextlib.AsyncExitStack() as stack:
                agent, welcome = await stack.enter_async_context(attach(server, role="agent"))
                session_id = welcome["session"]["id"]
                viewers = []
                for msgpack in (False, True):
                    peer, _ = await stack.enter_async_context(
                        attach(server, session_id, msgpack=msgpack)
                    )
                    viewers.append(peer)
                    await agent.recv_type("presence")
                for i in range(300):
                    frame = {"type": "event", "id": i, "event": token(f"{i:04}" + "r" * 2000)}
                    await agent.request(frame, "ack")
                for viewer in viewers:
                    while (await viewer.recv_type("event"))["seq"] < 300:
                        pass
                actor = server.manager.live_actor(session_id)
                assert actor is not None and actor.room.ring is not None
                counted = actor.room.ring_bytes
                before = tracemalloc.get_traced_memory()[0]
                actor.room.drop_ring()
                freed = before - tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert 0 < freed <= counted, f"dropping the ring freed {freed} bytes, it counted {counted}"


async def ring_freed_and_counted(
    store: str, size: int, keyed: bool = False, count: int = 300
) -> tuple[int, int]:
    """What dropping a ring of ``count`` events of ``size`` bytes frees, as tracemalloc
    sees it, and what the ring counted. The publisher alone is attached: its events go
    to the ring and to no peer, so no frame of them is made."""
    tracemalloc.start()
    try:
        async with run_server(store=store, ring_size=10_000, ring_bytes=64 * MIB) as server:
            async with attach(server, role="agent") as (agent, welcome):
                session_id = welcome["session"]["id"]
                for i in range(count):
                    frame = {"type": "event", "id": i, "event": token(f"{i:04}" + "b" * size)}
                    if keyed:
                        frame["key"] = f"{i:04}" + "k" * 120
                    await agent.request(frame, "ack")
                actor = server.manager.live_actor(session_id)
                assert actor is not None and actor.room.ring is not None
                counted = actor.room.ring_bytes
                before = tracemalloc.get_traced_memory()[0]
                actor.room.drop_ring()
                return before - tracemalloc.get_traced_memory()[0], counted
    finally:
        tracemalloc.stop()


async def test_a_ring_of_big_events_nobody_framed_holds_what_it_counts(tmp_path: Path) -> None:
    """The ring is the events' only holder (JSONL), and what it keeps of each is the
    event's JSON: exactly its bytes, not the encoder's growth buffer."""
    freed, counted = await ring_freed_and_counted(f"jsonl://{tmp_path}/j", 100_000, count=20)
    # (one event may still be held elsewhere: the last one delivered)
    assert 19 * 100_000 < freed <= counted, f"dropping the ring freed {freed}, it counted {counted}"


@pytest.mark.parametrize("size", [20, 300, 440])
async def test_a_ring_of_small_events_holds_what_it_counts(tmp_path: Path, size: int) -> None:
    freed, counted = await ring_freed_and_counted(f"jsonl://{tmp_path}/j", size)
    assert freed <= counted, f"dropping the ring freed {freed}, it counted {counted}"


@pytest.mark.parametrize("count", [1, 5])
async def test_a_ring_of_few_events_holds_what_it_counts(tmp_path: Path, count: int) -> None:
    """Its deque (760 bytes) is counted too: uncounted, a ring of one event held 657
    bytes more than it counted, of five 437 more."""
    freed, counted = await ring_freed_and_counted(f"jsonl://{tmp_path}/j", 20, count=count)
    assert freed <= counted, f"dropping the ring freed {freed}, it counted {counted}"


async def test_a_ring_of_keyed_events_holds_what_it_counts(tmp_path: Path) -> None:
    """On SQLite the ring is the key's only holder (JSONL's key window keeps its own)."""
    freed, counted = await ring_freed_and_counted(f"sqlite://{tmp_path}/s.db", 600, keyed=True)
    assert freed <= counted, f"dropping the ring freed {freed}, it counted {counted}"


async def test_queues_count_no_byte_once_sent_though_peers_drop_mid_stream() -> None:
    """Bursts of large events, more than one write takes, go to readers of both codecs
    that read them all and to a viewer that reads one and drops its socket (writes cut
    short, then failing), many times over: the readers' queues count no byte once all
    is read, and the budget holds the session's ring and no more."""
    async with (
        run_server(rate_limit_bytes=0, durability="os") as server,
        attach(server, role="agent") as (agent, welcome),
        attach(server, welcome["session"]["id"]) as (reader, _),
        attach(server, welcome["session"]["id"], msgpack=True) as (packed_reader, _),
    ):
        session_id = welcome["session"]["id"]
        actor = server.manager.live_actor(session_id)
        assert actor is not None
        sent = 0
        for n in range(16):
            async with attach(server, session_id, msgpack=n % 2 == 1) as (dropping, _):
                for i in range(8):  # 320 KB: past one write's 256 KiB
                    frame = {"type": "event", "id": f"{n}.{i}", "event": token("z" * 40_000)}
                    await agent.request(frame, "ack")
                    sent += 1
                await dropping.recv_type("event")
                dropping.ws.transport.abort()
            for peer in (reader, packed_reader):
                while (await peer.recv_type("event"))["seq"] < sent:
                    pass
            await eventually(lambda: len(actor.room.outboxes) == 3)
            assert [outbox.bytes for outbox in actor.room.outboxes.values()] == [0, 0, 0]
            assert server.manager.budget.used == actor.room.ring_bytes > 0
