"""Slow consumers: peers that never read are closed with 4429 once their send queue
overflows, while the peers that read get every event, in order, without a gap.

The outbox overflows only after the kernel's socket buffers are full, hence the large
payloads (the recipe of test_server_lifecycle's slow consumer test). The throughput
and latency side is bench/slow_consumers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tests.replay_support import metric, publish, read_until_close, stalled_resumer
from tests.support import Peer, attach, run_server, token
from tests.test_server_lifecycle import eventually

SLOW = 5
READERS = 3
TOTAL = 300
PAYLOAD = "y" * 60_000


async def test_never_reading_peers_are_closed_4429_and_readers_get_everything() -> None:
    # The slow peers read only once the readers are done: a close timeout long enough
    # that the server still waits for them to take their close frame. The agent's 18 MB
    # come unpaced: at the default byte rate (2 MiB/s) they took some 7 s.
    config: dict[str, Any] = {"send_queue_frames": 64, "durability": "os", "close_timeout": 30}
    async with run_server(**config, rate_limit_bytes=0) as server:
        async with contextlib.AsyncExitStack() as stack:
            agent, welcome = await stack.enter_async_context(attach(server, role="agent"))
            session_id = welcome["session"]["id"]
            slow = [
                (await stack.enter_async_context(attach(server, session_id)))[0]
                for _ in range(SLOW)
            ]
            readers = [
                (await stack.enter_async_context(attach(server, session_id)))[0]
                for _ in range(READERS)
            ]

            async def read_all(peer: Peer) -> list[int]:
                seqs: list[int] = []
                while len(seqs) < TOTAL:
                    frame = await peer.recv_type("event", timeout=20)
                    seqs.append(frame["seq"])
                return seqs

            reading = [asyncio.create_task(read_all(peer)) for peer in readers]
            for i in range(0, TOTAL, 10):  # ten in flight at a time
                for j in range(i, i + 10):
                    await agent.send({"type": "event", "id": j, "event": token(PAYLOAD)})
                for _ in range(10):
                    await agent.recv_type("ack")
            for seqs in await asyncio.wait_for(asyncio.gather(*reading), 60):
                assert seqs == list(range(1, TOTAL + 1))
            for peer in slow:
                code, frames = await peer.closed(timeout=20)
                assert (code, peer.ws.close_reason) == (4429, "too slow to read: send queue full")
                # What was written to its socket, in order, then the close: its queued
                # frames are dropped, and no `closed` comes.
                seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
                assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < TOTAL
                assert "closed" not in [frame["type"] for frame in frames]
        metrics = server.metrics.render().decode()
        assert f"bamboo_send_queue_drops_total {float(SLOW)}" in metrics


async def test_a_peer_closed_as_too_slow_that_reads_nothing_is_dropped_at_the_close_timeout() -> (
    None
):
    """Its close frame waits behind megabytes it does not read: the server waits the
    close timeout for it, then drops the socket. Before, the close waited for room in
    the socket's buffer with no deadline: the connection stayed until the keepalive
    gave up on it, or for good with the keepalive off (as here)."""
    close_timeout = 1.0
    config: dict[str, Any] = {"send_queue_frames": 64, "close_timeout": close_timeout}
    config |= {"ping_interval": None, "rate_limit_bytes": 0, "durability": "os"}
    async with run_server(**config) as server:
        loop = asyncio.get_running_loop()

        def gauge(name: str) -> float:
            return metric(server.metrics.render().decode(), name)

        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
            try:
                await eventually(lambda: gauge("bamboo_connections") == 2)
                for i in range(0, TOTAL, 10):  # ten in flight at a time
                    for j in range(i, i + 10):
                        await agent.send({"type": "event", "id": j, "event": token(PAYLOAD)})
                    for _ in range(10):
                        await agent.recv_type("ack")
                    if gauge("bamboo_send_queue_drops_total"):
                        break
                await eventually(lambda: gauge("bamboo_send_queue_drops_total") == 1)
                dropped = loop.time()
                await eventually(lambda: gauge("bamboo_connections") == 1, close_timeout + 3.0)
                gone = loop.time() - dropped
                # What it was sent before the close: events in order, and no close frame.
                got, code = await loop.run_in_executor(None, read_until_close, stalled, 1.0)
            finally:
                stalled.close()
            assert close_timeout - 0.3 <= gone <= close_timeout + 3.0, gone
            assert got == list(range(1, len(got) + 1)) and code is None
            # The agent is served on.
            assert (await agent.request({"type": "ping", "id": "p"}, "pong"))["id"] == "p"


async def test_a_viewer_that_reads_nothing_of_a_closing_session_is_dropped_in_time() -> None:
    """A session closes under a viewer whose socket is full: its queued frames, then
    `closed` and the close, get the close timeout each, then the socket is dropped
    (it was kept for good with the keepalive off)."""
    close_timeout = 1.0
    config: dict[str, Any] = {"close_timeout": close_timeout, "ping_interval": None}
    config |= {"rate_limit_bytes": 0, "durability": "os"}
    async with run_server(**config) as server:
        loop = asyncio.get_running_loop()

        def connections() -> float:
            return metric(server.metrics.render().decode(), "bamboo_connections")

        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
            try:
                await eventually(lambda: connections() == 2)
                # Megabytes, more than the socket buffers take; fewer than its queue.
                await publish(agent, 40, size=100_000)
                await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                closed = loop.time()
                await eventually(lambda: connections() == 0, 2 * close_timeout + 3.0)
                gone = loop.time() - closed
            finally:
                stalled.close()
        assert gone <= 2 * close_timeout + 3.0, gone
        assert metric(server.metrics.render().decode(), "bamboo_send_queue_drops_total") == 0
