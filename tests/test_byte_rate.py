"""The byte rate (``--rate-limit-bytes``): a connection's frames are read at most at
that many bytes a second past its burst; a peer over it waits, is never refused, and
the server goes on serving everyone else meanwhile."""

from __future__ import annotations

import asyncio
import time

from bamboo_session.server.limits import ByteRate, payload_bytes
from tests.support import attach, get, run_server, token
from tests.test_limits import FakeClock

RATE = 200_000
BURST = 100_000
FRAMES = 10
TEXT = "x" * 50_000  # each frame a little over 50 kB: the burst holds one, not two


def test_a_frame_within_the_allowance_waits_not_and_one_past_it_waits_its_debt() -> None:
    clock = FakeClock()
    reads = ByteRate(rate=1000, burst=1500, clock=clock)
    assert reads.take(b"a" * 1000) == 0.0
    assert reads.take(b"a" * 1000) == 0.5  # 500 bytes short, at 1000 a second
    clock.now += 0.5  # the reader waited it out; the next frame starts from nothing
    assert reads.take(b"a" * 250) == 0.25
    clock.now += 100  # saved up no more than the burst
    assert reads.take(b"a" * 1500) == 0.0 and reads.take(b"a") > 0
    assert reads.waited == 0.75 + 0.001
    assert ByteRate(rate=0, burst=1).take(b"a" * 10**6) == 0.0  # 0: no limit


def test_a_text_frame_counts_its_utf8_bytes() -> None:
    assert payload_bytes("é" * 10) == 20
    assert payload_bytes("e" * 10) == 10
    assert payload_bytes(b"\xff" * 10) == 10


async def read_wait_seconds(server: object) -> float:
    metrics = (await get(server, "/metrics"))[1]
    line = next(x for x in metrics.splitlines() if x.startswith("bamboo_read_wait_seconds_total"))
    return float(line.split()[1])


async def test_a_peer_over_the_byte_rate_is_read_slowly_not_refused_and_others_are_served() -> None:
    async with run_server(rate_limit_bytes=RATE, rate_limit_bytes_burst=BURST) as server:
        async with (
            attach(server) as (publisher, welcome),
            attach(server, welcome["session"]["id"]) as (other, _),
        ):
            started = time.monotonic()
            for i in range(FRAMES):
                await publisher.send({"type": "event", "id": i, "event": token(TEXT)})
            # Another connection is answered while the publisher's frames wait.
            pong = asyncio.ensure_future(other.request({"type": "ping", "id": "p"}, "pong"))
            acks = []
            while len(acks) < FRAMES:
                reply = await publisher.recv()
                if reply["type"] == "presence":
                    continue
                assert reply["type"] == "ack", reply  # nothing refused
                acks.append(reply["id"])
                if len(acks) == 2:
                    assert pong.done(), "the other connection waited for the publisher"
            elapsed = time.monotonic() - started
            assert acks == list(range(FRAMES))
            # Past the burst, 9 more frames of over 50 kB at 200 kB a second.
            assert elapsed >= (FRAMES * len(TEXT) - BURST) / RATE * 0.95
            stored = await server.manager.read_events(welcome["session"]["id"])
            assert [e.event.content for e in stored] == [TEXT] * FRAMES
        assert await read_wait_seconds(server) >= (FRAMES * len(TEXT) - BURST) / RATE * 0.95


async def test_rate_limit_bytes_0_turns_the_byte_rate_off() -> None:
    async with run_server(rate_limit_bytes=0, rate_limit_bytes_burst=1) as server:
        async with attach(server) as (publisher, _):
            for i in range(FRAMES):
                await publisher.send({"type": "event", "id": i, "event": token(TEXT)})
            replies = [(await publisher.recv())["type"] for _ in range(FRAMES)]
            assert replies == ["ack"] * FRAMES
        assert await read_wait_seconds(server) == 0.0
