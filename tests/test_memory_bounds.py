"""Memory is bounded in bytes, not only in counts: send queues, replay rings, inboxes and
their sum (the process's memory budget); pages are bounded in bytes; reading costs what
is asked, measured with tracemalloc around real requests on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import sys
import tracemalloc
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest

from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.client import StoredEvent as ClientStoredEvent
from bamboo_session.protocol.codec import JSON, MSGPACK
from bamboo_session.protocol.frames import Pong
from bamboo_session.protocol.models import StoredEvent, Token
from bamboo_session.server.budget import MemoryBudget
from bamboo_session.server.commands import Append, Inbox
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import CloseRequest, Outbox
from bamboo_session.server.room import SessionRoom
from tests.instances import eventually as eventually_async
from tests.server_process import ServerProcess
from tests.support import attach, get, run_server, token
from tests.test_server_lifecycle import eventually
from tests.test_stalled_disks import write_lock_held
from tests.test_wire_floods import masked_frame, upgraded_socket

T = TypeVar("T")
KIB = 1024
MIB = 1024 * KIB


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
    # a frame's bytes object, header included
    held = sum(
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
                # 400 x 60 KB: more than loopback's socket buffers hold, so the slow
                # reader's queue backs up past 1 MiB, at a few hundred frames at most.
                for i in range(400):
                    frame = {"type": "event", "id": i, "event": token("y" * 60_000)}
                    await agent.request(frame, "ack")
                code, _ = await slow.closed(timeout=20)
                assert code == 4429
        metrics = server.metrics.render().decode()
        assert "bamboo_send_queue_drops_total 1.0" in metrics
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


async def test_a_ring_of_keyed_events_holds_what_it_counts(tmp_path: Path) -> None:
    """On SQLite the ring is the key's only holder (JSONL's key window keeps its own)."""
    freed, counted = await ring_freed_and_counted(f"sqlite://{tmp_path}/s.db", 600, keyed=True)
    assert freed <= counted, f"dropping the ring freed {freed}, it counted {counted}"


# -- reading costs what is asked ---------------------------------------------------------


async def peak_during(action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What ``action`` returns, and the most memory it held above where it started."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = await action()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


BIG = 900_000
COUNT = 24  # 24 x 900 KB: about 21 MB of history; reading it all would hold more


async def test_attach_and_resume_read_only_what_they_replay(tmp_path: Path) -> None:
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path) as server:  # a restart: nothing cached

        async def hello() -> dict[str, Any]:
            async with attach(server, "big") as (_, welcome):
                return welcome

        welcome, peak = await peak_during(hello)
        assert welcome["session"]["message_count"] == COUNT
        assert peak < 2 * BIG, f"attach held {peak} bytes"

        async def resume_one() -> dict[str, Any]:
            async with attach(server, "big", last_seq=COUNT - 1) as (peer, w):
                assert w["replay"] == 1
                return await peer.recv_type("event")

        replayed, peak = await peak_during(resume_one)
        assert replayed["seq"] == COUNT
        # One event's copies on both ends (line, frame, client's str and object).
        assert peak < 8 * BIG, f"resuming for one event held {peak} bytes"


async def test_history_of_one_reads_about_one_message(tmp_path: Path) -> None:
    # Needs a store whose get_history_page reads about what it returns (the JSONL
    # backend's history cache, on its own branch).
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path) as server, attach(server, "big") as (peer, _):

        async def history() -> dict[str, Any]:
            return await peer.request({"type": "history", "id": "h", "limit": 1}, "history")

        reply, peak = await peak_during(history)
        assert len(reply["messages"]) == 1 and reply["has_more"]
        assert peak < 8 * BIG, f"history limit=1 held {peak} bytes"


async def fill_with_large_messages(data_dir: Path) -> None:
    # 21 MB through one connection: at the default byte rate, 9 s of set-up.
    async with run_server(data_dir, durability="os", rate_limit_bytes=0) as server:
        async with attach(server, "big", create=True) as (peer, _):
            for i in range(COUNT):
                message = {"role": "assistant", "content": f"{i:02}" + "b" * BIG}
                await peer.request({"type": "message", "id": i, "message": message}, "ack")


# -- HTTP answers nobody reads -----------------------------------------------------------


def unread_get(port: int, path: str) -> socket.socket:
    """A peer that asks for ``path`` and does not read the answer (a tiny buffer)."""
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.connect(("127.0.0.1", port))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return peer


def status_of(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """The status and Retry-After of a request whose answer is read in full."""
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        answer = b""
        while chunk := peer.recv(1 << 20):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    lines = head.split("\r\n")
    retry = next((h.split(":")[1].strip() for h in lines if h.startswith("Retry-After")), "")
    return int(head.split()[1]), retry


def kernel_send_buffer() -> int:
    """The most of an answer the kernel takes into a socket's send buffer (Linux grows
    it up to tcp_wmem's maximum); the rest waits in the server's own buffer."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * MIB


async def history_page_of(server: Any, messages: int, size: int) -> str:
    """The path of a page of a new session's history: ``messages`` of ``size`` bytes."""
    async with attach(server, role="agent") as (agent, welcome):
        for i in range(messages):
            message = {"role": "user", "content": f"{i}" + "m" * size}
            await agent.request({"type": "message", "id": i, "message": message}, "ack")
    return f"/api/v1/sessions/{welcome['session']['id']}?limit=1000"


MISSING = "/api/v1/sessions/no-such-session"


async def test_answers_nobody_reads_are_bounded_in_bytes() -> None:
    # A 4 MiB budget: HTTP answers not yet taken may hold a quarter of it, 1 MiB. The
    # page is 2 MiB more than the kernel takes off the server's hands.
    page_bytes = kernel_send_buffer() + 2 * MIB
    part = 512 * KIB
    config = {"memory_budget": 4 * MIB, "max_page_bytes": page_bytes + MIB}
    async with run_server(**config) as server:
        page = await history_page_of(server, page_bytes // part + 1, part)
        loop = asyncio.get_running_loop()
        stalled = await loop.run_in_executor(None, unread_get, server.port, page)
        try:
            await eventually(lambda: server.unread_answers.used > MIB)
            assert await loop.run_in_executor(None, status_of, server.port, page) == (503, "1")
            # Refused before the store is read: a missing session is not even looked up.
            missing = await loop.run_in_executor(None, status_of, server.port, MISSING)
            assert missing == (503, "1")
            # Small answers stay served whatever is held.
            health = await loop.run_in_executor(None, status_of, server.port, "/healthz")
            assert health[0] == 200
            # So does a HEAD of the page (no body), and a path that only looks like one.
            head = await loop.run_in_executor(None, status_of, server.port, page, "HEAD")
            assert head == (200, "")
            other = await loop.run_in_executor(None, status_of, server.port, "/api/v1/sessionsx")
            assert other == (404, "")
        finally:
            stalled.close()
        await eventually(lambda: server.unread_answers.used == 0)
        assert (await loop.run_in_executor(None, status_of, server.port, page))[0] == 200
        assert (await loop.run_in_executor(None, status_of, server.port, MISSING))[0] == 404


async def test_answers_nobody_reads_are_counted_though_the_kernel_could_take_them() -> None:
    # Answers not yet read may hold 1 MiB (a quarter of the budget); the page is about
    # 1 MB, less than the kernel's send buffer can grow to (tcp_wmem, 4 MiB here): a
    # kernel left to itself took it whole, so that it was not counted, and every peer
    # that never reads could hold another.
    config = {"memory_budget": 4 * MIB, "max_page_bytes": 2 * MIB}
    async with run_server(**config) as server:
        page = await history_page_of(server, 8, 120_000)
        loop = asyncio.get_running_loop()
        stalled = await loop.run_in_executor(None, unread_get, server.port, page)
        try:
            await asyncio.sleep(0.2)  # what the kernel takes, it takes at once
            assert server.unread_answers.used > 512 * KIB  # most of the page is counted
            assert await loop.run_in_executor(None, status_of, server.port, page) == (503, "1")
        finally:
            stalled.close()
        await eventually(lambda: server.unread_answers.used == 0)


def read_and_stay(port: int, path: str) -> tuple[socket.socket, bytes]:
    """A peer that reads its whole answer (to the server's end of it) and keeps its
    connection open, as a keep-alive pool does."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    answer = b""
    while chunk := peer.recv(65536):
        answer += chunk
    return peer, answer


async def test_an_answer_read_in_full_is_not_counted_while_its_connection_stays_open() -> None:
    # 512 KiB for answers not yet read, the page ~360 KB: two do not fit at once. The
    # server waits close_timeout for a peer to close after its answer: long here.
    async with run_server(memory_budget=2 * MIB, close_timeout=60) as server:
        page = await history_page_of(server, 3, 120_000)
        loop = asyncio.get_running_loop()
        staying, answer = await loop.run_in_executor(None, read_and_stay, server.port, page)
        try:
            assert answer.startswith(b"HTTP/1.1 200") and len(answer) > 360_000
            # Its bytes have left: the next big answer fits, and nothing is counted.
            assert await loop.run_in_executor(None, status_of, server.port, page) == (200, "")
            await eventually(lambda: server.unread_answers.used == 0)
        finally:
            staying.close()


async def test_a_reply_waiting_for_a_slow_reader_is_held_once(tmp_path: Path) -> None:
    """A page of history waiting in a send queue is kept as its encoded bytes only, not
    beside its decoded messages (which doubled what unread replies held)."""
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path, send_queue_bytes=64 * MIB, memory_budget=256 * MIB) as server:
        loop = asyncio.get_running_loop()
        peer = await loop.run_in_executor(None, upgraded_socket, server.port, "/api/v1/stream/big")
        try:
            hello = json.dumps({"type": "hello"}).encode()
            await loop.run_in_executor(None, peer.sendall, masked_frame(hello, 0x1))
            await eventually(lambda: server.manager.budget.used == 0)
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                pages = 20  # one 900 KB message each, never read (the kernel takes a few)
                requests = b"".join(
                    masked_frame(json.dumps({"type": "history", "id": n, "limit": 1,
                                             "before": COUNT - n}).encode(), 0x1)
                    for n in range(pages)
                )  # fmt: skip
                await loop.run_in_executor(None, peer.sendall, requests)
                await eventually(lambda: server.manager.budget.used >= 8 * BIG)
                await asyncio.sleep(0.2)
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            queued = server.manager.budget.used
            # The queued bytes, plus what the transport has taken and the last page read.
            assert held < 1.5 * queued, f"{held} bytes held for {queued} queued"
        finally:
            peer.close()


async def test_an_idle_viewer_does_not_hold_its_last_replay_page(tmp_path: Path) -> None:
    await fill_with_large_messages(tmp_path)
    # A restart, and a ring too small for one event: replays read the store, and what
    # they read stays nowhere (a ring big enough would keep the last event, by design).
    async with run_server(tmp_path, ring_bytes=64 * KIB) as server:
        async with contextlib.AsyncExitStack() as stack:
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for _ in range(5):
                    peer, welcome = await stack.enter_async_context(
                        attach(server, "big", last_seq=COUNT - 2)
                    )
                    assert welcome["replay"] == 2
                    for _ in range(2):
                        await peer.recv_type("event")
                await asyncio.sleep(0.2)  # replays done; five viewers idle
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
        assert held < 2 * BIG, f"five idle viewers hold {held} bytes"


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
    goes into the inbox; once everything is stored the budget holds the ring alone."""
    path = tmp_path / "bamboo.db"
    size = 300 * KIB
    async with run_server(store=f"sqlite://{path}", inbox_limit=1) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            actor = server.manager.live_actor(session_id)
            assert actor is not None
            async with write_lock_held(path):
                # The first is taken (its append waits for the lock), the second queued.
                for n in (1, 2):
                    await agent.send({"type": "event", "id": n, "event": token("x" * size)})
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
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
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
