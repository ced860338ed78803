"""The byte rate (``--rate-limit-bytes``): a connection's frames are read at most at
that many bytes a second past its burst, each frame costing its payload and 1 KiB; a
peer over it waits, is never refused, and the server goes on serving everyone else
meanwhile, whether the peer floods big frames or empty control frames."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import threading
import time
from typing import Any

from bamboo_session.server.http_wire import BambooConnection
from bamboo_session.server.limits import FRAME_BYTES, ByteRate
from bamboo_session.server.sliced_reads import PARSE_SLICE
from tests.instances import eventually
from tests.support import attach, get, run_server, token
from tests.test_limits import FakeClock
from tests.test_wire_floods import upgraded_socket

RATE = 200_000
BURST = 100_000
FRAMES = 10
TEXT = "x" * 50_000  # each frame a little over 50 kB: the burst holds one, not two


def test_a_frame_within_the_allowance_waits_not_and_one_past_it_waits_its_debt() -> None:
    clock = FakeClock()
    reads = ByteRate(rate=1000, burst=1500, clock=clock)
    assert reads.charge(1000) == 0.0
    assert reads.charge(1000) == 0.5  # 500 bytes short, at 1000 a second
    clock.now += 0.5  # the reader waited it out; the next frame starts from nothing
    assert reads.charge(250) == 0.25
    clock.now += 100  # saved up no more than the burst
    assert reads.charge(1500) == 0.0 and reads.charge(1) > 0
    assert ByteRate(rate=0, burst=1).charge(10**6) == 0.0  # 0: no limit


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
            # Past the burst, the frames' bytes (and 1 KiB each) at 200 kB a second; the
            # frame that runs into debt is handled, the wait comes before the next one.
            assert elapsed >= ((FRAMES - 1) * (len(TEXT) + FRAME_BYTES) - BURST) / RATE * 0.9
            stored = await server.manager.read_events(welcome["session"]["id"])
            assert [e.event.content for e in stored] == [TEXT] * FRAMES
        assert await read_wait_seconds(server) >= ((FRAMES - 1) * len(TEXT) - BURST) / RATE * 0.9


async def test_rate_limit_bytes_0_turns_the_byte_rate_off() -> None:
    async with run_server(rate_limit_bytes=0, rate_limit_bytes_burst=1) as server:
        async with attach(server) as (publisher, _):
            for i in range(FRAMES):
                await publisher.send({"type": "event", "id": i, "event": token(TEXT)})
            replies = [(await publisher.recv())["type"] for _ in range(FRAMES)]
            assert replies == ["ack"] * FRAMES
        assert await read_wait_seconds(server) == 0.0


def masked_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A client's frame as on the wire (mask of zeros), for a peer that writes bytes."""
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)]) + bytes(4) + payload


def read_until_closed(peer: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while peer.recv(65536):
            pass


def flood_of_empty_frames(port: int, session_id: str, stop: threading.Event) -> int:
    """A raw peer: upgrades, says hello, then writes empty Pongs and a message split
    into a thousand empty fragments, until ``stop`` (or 30 s); reads what comes back.
    How many floods it wrote."""
    peer = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    peer.sendall(
        f"GET /api/v1/stream/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    peer.recv(4096)
    peer.sendall(masked_frame(0x1, b'{"type":"hello"}'))
    fragments = masked_frame(0x1, b'{"type":"ping"}', fin=False)
    fragments += masked_frame(0x0, fin=False) * 1000 + masked_frame(0x0)
    flood = masked_frame(0xA) * 20_000 + fragments
    threading.Thread(target=read_until_closed, args=(peer,), daemon=True).start()
    sent, deadline = 0, time.monotonic() + 30
    peer.settimeout(0.5)
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                peer.sendall(flood)
                sent += 1
            except TimeoutError:
                continue  # the server reads slowly: try again until told to stop
    except OSError:
        pass
    finally:
        peer.close()
    return sent


async def test_a_flood_of_empty_frames_is_metered_and_others_are_served() -> None:
    """Pongs and empty fragments carry no payload: each costs 1 KiB against the rate.
    Without that, such a flood took every cycle of the loop: another peer's opening
    handshake timed out after 10 s."""
    async with run_server() as server:
        async with attach(server, create=True) as (_, welcome):
            session_id = welcome["session"]["id"]
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        flooding = loop.run_in_executor(None, flood_of_empty_frames, server.port, session_id, stop)
        try:
            # The flood has spent its burst once its reads wait (a fixed sleep was too
            # short for a flooding thread starved of CPU).
            await eventually(lambda: read_wait_seconds(server), timeout=30)
            async with attach(server, session_id) as (bystander, _):
                for i in range(20):
                    assert (await bystander.request({"type": "ping", "id": i}, "pong"))["id"] == i
        finally:
            stop.set()
            assert await flooding > 0


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A client's final frame of any size as on the wire (mask of zeros)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + bytes(4) + payload


def event_frame(n: int, content: str) -> bytes:
    frame = {"type": "event", "id": n, "event": {"type": "token", "content": content}}
    return client_frame(json.dumps(frame).encode())


async def held_connection(server: Any, session_id: str) -> tuple[socket.socket, BambooConnection]:
    """A raw peer attached to ``session_id`` whose next frame runs into debt, with the
    start of the frame after it parsed and its rest held: the peer's socket and the
    server's connection, held."""
    peer = await asyncio.to_thread(upgraded_socket, server.port, f"/api/v1/stream/{session_id}")
    peer.sendall(client_frame(b'{"type":"hello"}'))
    await asyncio.to_thread(peer.recv, 65536)  # the welcome
    big = event_frame(1, "a" * 150_000)  # past the 50 kB burst: about a second of debt
    after = event_frame(2, "b")
    # The big frame ends inside the last 4 KiB slice parsed: the next frame starts in
    # it, and its rest is held, in the same read (one write of 8 KiB on loopback).
    tail = 2 * PARSE_SLICE - 10
    peer.sendall(big[:-tail])
    await asyncio.sleep(0.3)  # parsed as it came: no frame ended, no debt yet
    peer.sendall(big[-tail:] + after)
    held = [c for c in server._open_connections if c._repaid is not None]
    for _ in range(50):
        if held:
            break
        await asyncio.sleep(0.02)
        held = [c for c in server._open_connections if c._repaid is not None]
    assert len(held) == 1 and held[0]._held, "the frame after the big one is held"
    return peer, held[0]


async def test_a_repayment_due_as_the_transport_is_aborted_parses_nothing() -> None:
    """The connection's transport is aborted (as a stop's drop or a close timeout does)
    in the turn of the loop its repayment falls due: what it held is not parsed, so
    the frame held is neither handled nor stored (connection_lost would have cancelled
    the repayment, one turn later)."""
    async with run_server(rate_limit_bytes=100_000, rate_limit_bytes_burst=50_000) as server:
        async with attach(server) as (_viewer, welcome):
            session_id = welcome["session"]["id"]
            peer, conn = await held_connection(server, session_id)
            try:
                repaid = conn._repaid
                assert repaid is not None
                loop = asyncio.get_running_loop()
                # Due a microsecond before the repayment: the loop wakes for it later
                # than that, and runs both in that one turn, the abort first.
                loop.call_at(repaid.when() - 1e-6, conn.transport.abort)
                await asyncio.sleep(repaid.when() - loop.time() + 0.5)
                assert conn.transport.is_closing()
                events = await server.manager.read_events(session_id)
                assert [e.event.content[:1] for e in events] == ["a"]
            finally:
                peer.close()


def read_bytes(peer: socket.socket, count: int) -> None:
    """Reads and drops ``count`` bytes from ``peer`` (at least)."""
    while count > 0:
        data = peer.recv(65536)
        assert data, "closed early"
        count -= len(data)
