"""Resume replays on a real server to resumers that do not keep up: one that does not
read is closed with 4429 at its page's deadline while a reader on the same server gets
everything; one that stops reading mid-replay is closed at the deadline, and one that
resets gives its page back; resumers stalled on the ring are charged only what it lets
go; one that reads slowly but steadily gets its whole replay."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bamboo_session.server.app import BambooServer
from bamboo_session.server.replay import kernel_queue
from tests.replay_support import (
    KIB,
    MIB,
    bytes_until_close,
    events_and_close,
    frame_bounds,
    gauge,
    kernel_send_buffer_max,
    metric,
    publish,
    read_until_close,
    server_frames,
    stalled_resumer,
)
from tests.support import attach, run_server
from tests.test_server_lifecycle import eventually


def close_reason(data: bytes) -> str | None:
    """The reason of the server's close frame in what a peer read, if one came."""
    for opcode, payload in server_frames(data):
        if opcode == 0x8:
            return payload[2:].decode()
    return None


@contextlib.asynccontextmanager
async def session_past_the_send_buffer(
    replay_deadline: float, ring_bytes: int = 64 * KIB, size: int = 200_000, **settings: Any
) -> AsyncIterator[tuple[BambooServer, str, int]]:
    """A server with that replay deadline (and ``settings``) and a session of events of
    ``size`` bytes (200 KB by default), 4 MiB more than the kernel's send buffer takes
    (so a replay backs up), and by default a ring too small for one event (so every
    replay reads the store): (server, session id, events)."""
    count = (kernel_send_buffer_max() + 4 * MIB) // size + 1
    config: dict[str, Any] = {"replay_page_timeout": replay_deadline, "ring_bytes": ring_bytes}
    config |= settings
    config["memory_budget"] = max(256 * MIB, 4 * ring_bytes)
    config["rate_limit_bytes"] = 0  # megabytes of events to set up, not a byte-rate test
    async with run_server(durability="os", **config) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, count, size=size)
        yield server, session_id, count


async def test_a_resumer_that_does_not_read_is_closed_4429_and_a_reader_gets_everything() -> None:
    deadline = 1.5
    async with session_past_the_send_buffer(deadline) as (server, session_id, count):
        loop = asyncio.get_running_loop()
        resumed_at = loop.time()  # before its hello: its page cannot have started earlier
        stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
        try:
            # The page it does not take is in the memory budget, beside the small ring.
            budget = server.manager.budget
            await eventually(lambda: budget.used >= 200_000)
            async with attach(server, session_id, last_seq=0) as (reader, resumed):
                assert resumed["replay"] == count
                seqs = [(await reader.recv_type("event"))["seq"] for _ in range(count)]
            assert seqs == list(range(1, count + 1))
            # Once the server dropped it, the stalled peer reads: what was written to it,
            # then 4429. Not at a set time after it resumed: its stall begins once the
            # kernel's buffers are full, which a loaded machine takes its time to get to,
            # and a peer that read before the drop would be making progress again.
            await eventually(lambda: gauge(server, "bamboo_send_queue_drops_total") == 1, 30.0)
            assert loop.time() - resumed_at >= deadline  # not before its deadline
            # The close frame is behind megabytes: read them as a reader would, not a
            # few KiB per wakeup (the server drops the socket --close-timeout after it).
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 * MIB)
            close_timeout = server.config.close_timeout
            data = await loop.run_in_executor(None, bytes_until_close, stalled, close_timeout)
        finally:
            stalled.close()
        got, code = events_and_close(data)
        assert code == 4429
        assert close_reason(data) == "too slow to read: replay page not taken in time"
        assert 0 < len(got) < count and got == list(range(1, len(got) + 1))
        assert gauge(server, "bamboo_send_queue_drops_total") == 1
        await eventually(lambda: gauge(server, "bamboo_connections") == 0)
        assert budget.used <= 64 * KIB  # the ring's, no page's


async def test_a_resumer_that_stops_reading_mid_replay_is_closed_at_the_deadline() -> None:
    """Events of a few KB, pages of dozens of them: the replay stops taking bytes once
    the socket's buffers are full. The 4429 comes at the deadline (give or take the
    quarter of it between looks for progress), not before; its close frame waits
    behind what the peer does not read, and the socket is dropped at the close
    timeout, keepalive or not, with the replay's frames."""
    deadline, close_timeout = 1.0, 1.0
    settings: dict[str, Any] = {"close_timeout": close_timeout, "ping_interval": None}
    async with session_past_the_send_buffer(deadline, size=4_000, **settings) as (
        server,
        session_id,
        count,
    ):
        loop = asyncio.get_running_loop()

        start = loop.time()
        stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
        try:
            await eventually(lambda: len(server._open_connections) == 1)
            (connection,) = server._open_connections
            fd = connection.transport.get_extra_info("socket").fileno()
            seen, onset = -1, loop.time()

            def dropped_at_last() -> bool:
                # The stall begins when what the server has yet to deliver last changed
                # (a page written, or bytes taken): not at a set time after the resume,
                # as a loaded machine takes its time to fill the kernel's buffers.
                nonlocal seen, onset
                if gauge(server, "bamboo_send_queue_drops_total") == 1:
                    return True
                waiting = connection.transport.get_write_buffer_size() + kernel_queue(fd)
                if waiting != seen:
                    seen, onset = waiting, loop.time()
                return False

            await eventually(dropped_at_last, 30.0)
            closed = loop.time() - start
            stalled_for = loop.time() - onset
            await eventually(lambda: gauge(server, "bamboo_connections") == 0, close_timeout + 3.0)
            dropped = loop.time() - start
            got, code = await loop.run_in_executor(None, read_until_close, stalled, 1.0)
        finally:
            stalled.close()
        assert deadline - 0.1 <= closed, closed
        assert stalled_for <= deadline + 3.0, (closed, stalled_for)
        assert close_timeout - 0.3 <= dropped - closed <= close_timeout + 3.0, dropped - closed
        # What it was sent, in order, then the end of the connection (the close frame
        # was still in the server's buffer).
        assert 0 < len(got) < count and got == list(range(1, len(got) + 1)) and code is None
        assert server.manager.budget.used <= 64 * KIB  # the ring's, no page's


async def test_a_stalled_resumer_that_resets_gives_its_page_back_and_logs_nothing() -> None:
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    async with session_past_the_send_buffer(30.0) as (server, session_id, _count):
        budget = server.manager.budget
        stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
        await eventually(lambda: budget.used >= 200_000)  # its page is charged, stalled
        # A reset, as a peer that vanishes with unread data sends one.
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stalled.close()
        await eventually(lambda: gauge(server, "bamboo_connections") == 0)
        assert budget.used <= 64 * KIB  # the ring's, no page's
    gc.collect()  # a task whose failure nobody retrieved is reported when collected
    assert not reports, [report.get("message") for report in reports]


async def test_resumers_stalled_on_the_ring_charge_only_what_it_lets_go() -> None:
    """Pages replayed from the ring are its frames, counted once by the ring, however
    many resumers send them: a reconnect storm of one session's viewers must not make
    the budget look spent and shed every other session's ring. Once the ring lets
    those events go, the stalled resumers that keep them alive are charged for them."""
    ring_bytes = 2 * (kernel_send_buffer_max() + 4 * MIB)
    loop = asyncio.get_running_loop()
    async with session_past_the_send_buffer(30.0, ring_bytes) as (server, session_id, count):
        actor = server.manager.live_actor(session_id)
        assert actor is not None and actor.room.ring is not None
        start = actor.room.ring_start - 1  # from there on, replays come from the ring
        assert count - start > kernel_send_buffer_max() // 200_000 + 4  # more than a socket takes
        budget = server.manager.budget
        stalled = [
            await loop.run_in_executor(None, stalled_resumer, server.port, session_id, start)
            for _ in range(4)
        ]
        try:
            await eventually(lambda: len(actor.room.outboxes) == 4)
            await asyncio.sleep(0.5)  # their first pages are sent, and stall
            assert budget.used - actor.room.ring_bytes <= 64 * KIB

            # Live traffic moves the ring past the stalled pages (twice what it holds):
            # it lets their events go, but the resumers keep them alive, so now they
            # charge them.
            async with attach(server, session_id, role="agent") as (agent, _welcome):
                await publish(agent, 2 * count, size=200_000)

            def charged_for_pages() -> int:  # neither the ring's nor the send queues'
                queued = sum(outbox.bytes for outbox in actor.room.outboxes.values())
                return budget.used - actor.room.ring_bytes - queued

            # At least one event of 200 KB; once per event, however many hold it.
            await eventually(lambda: charged_for_pages() >= 200_000, 5.0)
        finally:
            for sock in stalled:
                sock.close()
        await eventually(lambda: budget.used - actor.room.ring_bytes <= 64 * KIB, 5.0)


def paced_reader(
    sock: socket.socket, rate: int, timeout: float, events: int
) -> tuple[list[int], int | None]:
    """Reads ``rate`` bytes a second, every 50 ms, until a close frame, ``events``
    whole frames, or ``timeout``: a slow reader that never stops. The seqs of the
    events read, and the close code.

    Its receive window is tiny (``stalled_resumer``), so what it reads comes in reads
    of a few KB, thousands of them: each is appended in place, and only new frames are
    parsed. (Copying all that was read at each read made the reader quadratic: beside
    other load it read at a tenth of its rate and ran out of time.)"""
    sock.setblocking(False)
    data, parsed, texts, closed = bytearray(), 0, 0, False
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        budget = rate // 20
        while budget > 0:
            try:
                chunk = sock.recv(min(budget, 65536))
            except BlockingIOError:
                break
            if not chunk:
                ends = 0
                break
            data += chunk
            budget -= len(chunk)
        for opcode, _start, end in frame_bounds(data, parsed):
            texts, closed, parsed = texts + (opcode == 0x1), closed or opcode == 0x8, end
        if closed or texts > events:  # the welcome, then the events
            break
        time.sleep(0.05)
    return events_and_close(bytes(data))


@pytest.mark.parametrize("size", [200_000, 4_000])
async def test_a_resumer_that_reads_slowly_but_steadily_gets_its_whole_replay(size: int) -> None:
    # More than the kernel's send buffer takes, read at 2 MB/s: the kernel reports the
    # socket writable again only after a large part of its buffer drained (longer than
    # the page deadline here), but bytes leave all the time. Found by review: a deadline
    # per page closed such readers. Pages of big events, and of many small ones.
    async with session_past_the_send_buffer(0.5, size=size) as (server, session_id, count):
        loop = asyncio.get_running_loop()
        slow = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
        try:
            got, code = await loop.run_in_executor(None, paced_reader, slow, 2_000_000, 60.0, count)
        finally:
            slow.close()
        assert code is None and got == list(range(1, count + 1))
        metrics = server.metrics.render().decode()
        assert metric(metrics, "bamboo_send_queue_drops_total") == 0
