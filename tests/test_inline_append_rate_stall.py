"""A publisher well under its frame rate limit whose lone event meets a stalled store:
a real server and WebSocket peer, the in-memory store's appends held for a while (as a
slow disk holds them).

Before the inline append (SessionActor.append_now), the reader read on while the
actor's task waited on the store, posting up to ``max_in_flight`` requests (half of
``--send-queue-frames``, 512 by default): the rate limiter saw those frames as they
came. The reader that runs the append itself reads nothing until the store answers,
then takes the stall's frames in one burst: past ``--rate-limit-burst`` of them the
limiter refused the rest (``rate_limited``, the events not stored), and past
``--rate-limit-refusals`` closed the peer with 4429, for a pause that was the store's.
The bucket now keeps what refilled during such a hold (FrameLimiter.held)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.gated_appends import GatedAppends
from tests.instances import eventually
from tests.support import Peer, attach, token

RATE = 200  # frames a second, and as many saved up
PACE = 150  # the publisher's: three quarters of its limit
STALL = 2.5  # seconds the store holds appends: PACE * STALL frames come meanwhile


async def hear(agent: Peer, heard: Counter[str]) -> None:
    """Counts each answer the agent gets, by its error code or type, until cancelled."""
    while True:
        frame = await agent.recv()
        heard[frame.get("code") or frame["type"]] += 1


async def test_a_store_stall_does_not_rate_limit_a_publisher_under_its_rate(
    tmp_path: Path,
) -> None:
    storage = GatedAppends()
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path))
    config = config.replace(rate_limit=RATE, rate_limit_burst=RATE, rate_limit_refusals=RATE)
    server = BambooServer(config, storage)
    await server.start()
    try:
        async with attach(server, "r", create=True, role="agent") as (agent, _):
            heard: Counter[str] = Counter()
            hearing = asyncio.ensure_future(hear(agent, heard))
            sent = 0
            began = time.monotonic()
            while (elapsed := time.monotonic() - began) < 2 * STALL:
                if storage.gate is None and 0.5 < elapsed < 1.0:
                    storage.gate = asyncio.Semaphore(0)  # held from here for STALL seconds
                elif storage.gate is not None and elapsed > 0.5 + STALL:
                    storage.open_gate()
                await agent.send({"type": "event", "id": sent, "event": token(str(sent))})
                sent += 1
                await asyncio.sleep(1 / PACE)
            await eventually(lambda: heard["ack"] + heard["rate_limited"] == sent, 10)
            hearing.cancel()
            assert heard["rate_limited"] == 0, heard
            assert heard["ack"] == sent
    finally:
        await server.stop()


async def test_what_a_hold_keeps_past_the_burst_is_bounded_by_the_requests_in_flight(
    tmp_path: Path,
) -> None:
    """A peer that floods while its event is held gets no more past the burst than the
    requests it may have in flight (half of --send-queue-frames), however long the hold."""
    storage = GatedAppends()
    config = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path))
    config = config.replace(
        rate_limit=RATE, rate_limit_burst=RATE, rate_limit_refusals=10_000, send_queue_frames=64
    )
    server = BambooServer(config, storage)
    await server.start()
    try:
        async with attach(server, "f", create=True, role="agent") as (agent, _):
            heard: Counter[str] = Counter()
            hearing = asyncio.ensure_future(hear(agent, heard))
            storage.gate = asyncio.Semaphore(0)
            flood = 3 * RATE
            await agent.send({"type": "event", "id": 0, "event": token("held")})
            await eventually(lambda: storage.in_store == 1)  # in its reader (append_now)
            for number in range(1, 1 + flood):
                await agent.send({"type": "event", "id": number, "event": token(str(number))})
            await asyncio.sleep(4)  # the hold refills 4 s of tokens: 800
            opened = time.monotonic()
            storage.open_gate()
            await eventually(lambda: heard["ack"] + heard["rate_limited"] == 1 + flood, 10)
            # The answers came at most this long after the gate opened: the frames were
            # read within it (a fraction of a second, longer on a loaded machine).
            reading = time.monotonic() - opened
            hearing.cancel()
            # The burst, the 32 requests in flight, and what refills while they are read:
            # not the 800 of the hold.
            refilled = int(RATE * reading) + 1
            assert RATE < heard["ack"] <= 1 + RATE + 32 + refilled, (heard, reading)
    finally:
        await server.stop()
