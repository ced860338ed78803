"""Slow consumers: peers that never read are closed with 4429 once their send queue
overflows, while the peers that read get every event, in order, without a gap.

The outbox overflows only after the kernel's socket buffers are full, hence the large
payloads (the recipe of test_server_lifecycle's slow consumer test). The throughput
and latency side is bench/slow_consumers.py.
"""

from __future__ import annotations

import asyncio
import contextlib

from tests.support import Peer, attach, run_server, token

SLOW = 5
READERS = 3
TOTAL = 300
PAYLOAD = "y" * 60_000


async def test_never_reading_peers_are_closed_4429_and_readers_get_everything() -> None:
    async with run_server(send_queue_frames=64, durability="os") as server:
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
                code, _ = await peer.closed(timeout=20)
                assert code == 4429
        metrics = server.metrics.render().decode()
        assert f"bamboo_send_queue_drops_total {float(SLOW)}" in metrics
