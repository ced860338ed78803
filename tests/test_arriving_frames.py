"""Frames still arriving, held in the server's parser until they are whole: charged to
their share of ``--memory-budget`` while they arrive and given back once, when the frame
completes or the peer goes; past the share, the connections whose frames have been
arriving longest are closed with 4429 while the server keeps serving others; and a
frame must come at ``MIN_LINK_RATE`` on average after its grace (arriving_frames.py).
Raw frames are written under a real client's connection, masked as a client's are."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.server import arriving_frames
from bamboo_session.server.app import BambooServer
from bamboo_session.server.link_progress import MIN_LINK_RATE
from tests.support import Peer, attach, run_server, token

KIB = 1024


def masked_frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> tuple[bytes, bytes]:
    """A client's frame of ``payload``: its head (with the mask) and its masked payload."""
    size = len(payload)
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    masks = (mask * (size // 4 + 1))[:size]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(masks, "big")).to_bytes(size, "big")
    return head + mask, masked


def event_frame(content_bytes: int, frame_id: int = 1) -> bytes:
    content = secrets.token_hex(content_bytes // 2)  # random: nothing to squeeze
    frame = {"type": "event", "id": frame_id, "key": f"k{frame_id}", "event": token(content)}
    return json.dumps(frame).encode()


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.01)


def arriving(server: BambooServer) -> int:
    return server.arriving_frames.used


async def test_a_partial_frame_is_charged_while_it_arrives_and_given_back_once_whole() -> None:
    async with run_server(durability="os") as server, attach(server, role="agent") as (peer, _):
        head, payload = masked_frame(event_frame(200 * KIB))
        peer.ws.transport.write(head + payload[: 100 * KIB])
        await until(lambda: arriving(server) == 100 * KIB)
        peer.ws.transport.write(payload[100 * KIB : 150 * KIB])
        await until(lambda: arriving(server) == 150 * KIB)
        peer.ws.transport.write(payload[150 * KIB :])
        ack = await peer.recv_type("ack")
        assert ack["id"] == 1 and ack["seq"] == 1, ack
        assert arriving(server) == 0
        # Small frames whole in their reads charge nothing, and leave nothing charged.
        for frame_id in range(2, 12):
            await peer.send({"type": "ping", "id": frame_id})
            assert (await peer.recv_type("pong"))["id"] == frame_id
        assert arriving(server) == 0
    assert arriving(server) == 0


async def test_the_fragments_of_a_message_not_ended_are_charged_too() -> None:
    async with run_server(durability="os") as server, attach(server, role="agent") as (peer, _):
        message = event_frame(100 * KIB)
        first, second = message[: 60 * KIB], message[60 * KIB :]
        head, payload = masked_frame(first, fin=False)
        peer.ws.transport.write(head + payload)
        # The first fragment is held whole till the message ends: its payload and its
        # frame object (FRAGMENT_BYTES); the second is charged as it comes.
        fragment = arriving_frames.FRAGMENT_BYTES
        await until(lambda: arriving(server) == 60 * KIB + fragment)
        head, payload = masked_frame(second, opcode=0x0)
        peer.ws.transport.write(head + payload[: 10 * KIB])
        await until(lambda: arriving(server) == 70 * KIB + fragment)
        peer.ws.transport.write(payload[10 * KIB :])
        assert (await peer.recv_type("ack"))["seq"] == 1
        assert arriving(server) == 0


async def test_a_peer_gone_mid_frame_gives_its_charge_back() -> None:
    async with run_server(durability="os") as server:
        async with attach(server, role="agent") as (peer, _):
            head, payload = masked_frame(event_frame(200 * KIB))
            peer.ws.transport.write(head + payload[: 120 * KIB])
            await until(lambda: arriving(server) == 120 * KIB)
            peer.ws.transport.abort()
            await until(lambda: not server._open_connections)
        assert arriving(server) == 0
        # The account is whole for the next peer: its own frame is counted from zero.
        async with attach(server, role="agent") as (peer, _):
            head, payload = masked_frame(event_frame(50 * KIB))
            peer.ws.transport.write(head + payload[: 30 * KIB])
            await until(lambda: arriving(server) == 30 * KIB)
            peer.ws.transport.write(payload[30 * KIB :])
            assert (await peer.recv_type("ack"))["seq"] == 1
        assert arriving(server) == 0


async def trickle(
    peer: Peer, frame: bytes, rate: int, seconds: float, after: float = 0.0, whole: bool = False
) -> None:
    """``frame``'s head, then its payload at ``rate`` bytes a second, for ``seconds``
    at most: never whole, unless ``whole``; begun ``after`` seconds."""
    await asyncio.sleep(after)
    head, payload = masked_frame(frame)
    transport = peer.ws.transport
    transport.write(head)
    step = rate // 10
    end = len(payload) if whole else len(payload) - 1
    for start in range(0, min(end, int(rate * seconds)), step):
        if transport.is_closing():
            return
        transport.write(payload[start : start + step])
        await asyncio.sleep(0.1)


async def close_of(peer: Peer) -> tuple[int | None, str | None]:
    code, _ = await peer.closed(timeout=10)
    return code, peer.ws.close_reason


async def test_slow_frames_past_their_share_are_closed_oldest_first_and_others_served() -> None:
    # A budget of 2 MiB: frames arriving may hold a sixteenth, but one of the largest
    # (256 KiB, in as many fragments as websockets allows) always fits. Ten peers
    # trickle 200 KB frames at 32 KB/s, above the floor of rate: 320 KB/s together,
    # past the share within 4 s.
    overrides: dict[str, Any] = {"memory_budget": 2 * 1024 * KIB, "max_frame_bytes": 256 * KIB}
    async with run_server(durability="os", **overrides) as server:
        share = server.arriving_frames.limit
        assert share == 256 * KIB + arriving_frames.MESSAGE_SLACK
        async with attach(server, role="agent") as (client, _):
            tricklers: list[Peer] = []
            contexts = [attach(server, role="agent") for _ in range(10)]
            for context in contexts:
                tricklers.append((await context.__aenter__())[0])
            try:
                # One after another, 0.1 s apart: their order of age is known.
                trickles = [
                    asyncio.ensure_future(
                        trickle(peer, event_frame(200 * KIB), 32 * KIB, 8.0, after=index / 10)
                    )
                    for index, peer in enumerate(tricklers)
                ]
                closes = [asyncio.ensure_future(close_of(peer)) for peer in tricklers]
                most, slowest, frame_id = 0, 0.0, 0
                started = time.monotonic()
                while time.monotonic() - started < 6.0:
                    most = max(most, arriving(server))
                    frame_id += 1
                    asked = time.monotonic()
                    await client.send({"type": "event", "id": frame_id, "event": token("hi")})
                    assert (await client.recv_type("ack"))["id"] == frame_id
                    slowest = max(slowest, time.monotonic() - asked)
                    await asyncio.sleep(0.05)
                assert most <= share
                assert slowest < 1.0, f"a plain client waited {slowest:.2f} s for an ack"
                done, _ = await asyncio.wait(closes, timeout=1.0)
                ended = [task.result() for task in done]
                assert ended, "no trickler was closed"
                assert all(
                    end == (CloseCode.TOO_SLOW, arriving_frames.SHARE_FULL) for end in ended
                ), ended
                # Oldest first (but the peer whose bytes make the room needed, who is
                # never its own victim): the first to trickle are closed, the last not.
                closed = {index for index, task in enumerate(closes) if task in done}
                assert 0 in closed and len(tricklers) - 1 not in closed, sorted(closed)
            finally:
                for task in trickles + closes:
                    task.cancel()
                await asyncio.gather(*trickles, *closes, return_exceptions=True)
                for peer in tricklers:
                    peer.ws.transport.abort()
                for context in contexts:
                    await context.__aexit__(None, None, None)
        await until(lambda: len(server._open_connections) == 0)
        assert arriving(server) == 0


async def test_a_peer_holding_the_most_is_closed_before_an_older_slow_upload() -> None:
    """An honest client uploads a 300 KB frame at 60 KB/s; 2 s in, another address
    starts 300 KB frames, sends 250 KB of each at once and stalls, two more than the
    share (the default frame size's, 1 MiB and its slack) holds: the stalling peer's
    own connections are closed, oldest first, and the upload is acknowledged. Closing
    the oldest holder of all closed the honest upload instead (r306)."""
    async with run_server(durability="os", memory_budget=16 * 1024 * KIB) as server:
        async with attach(server, role="agent") as (honest, _):
            uploading = asyncio.ensure_future(
                trickle(honest, event_frame(300 * KIB), 60_000, 20.0, whole=True)
            )
            await asyncio.sleep(2.0)
            stalls = (server.arriving_frames.limit - 300 * KIB) // (250 * KIB) + 2
            contexts = [
                attach(server, role="agent", local_addr=("127.0.0.2", 0)) for _ in range(stalls)
            ]
            stalling = [(await context.__aenter__())[0] for context in contexts]
            try:
                assert stalling[0].ws.local_address[0] == "127.0.0.2"
                for peer in stalling:
                    head, payload = masked_frame(event_frame(300 * KIB))
                    peer.ws.transport.write(head + payload[: 250 * KIB])
                    await asyncio.sleep(0.05)
                ack = await honest.recv_type("ack", timeout=30)
                assert ack["id"] == 1 and ack["seq"] == 1, ack
                closes = await asyncio.gather(*(close_of(peer) for peer in stalling[:2]))
                assert closes == [(CloseCode.TOO_SLOW, arriving_frames.SHARE_FULL)] * 2
            finally:
                uploading.cancel()
                for peer in stalling:
                    peer.ws.transport.abort()
                for context in contexts:
                    await context.__aexit__(None, None, None)
        await until(lambda: len(server._open_connections) == 0)
        assert arriving(server) == 0


async def test_a_frame_slower_than_the_floor_on_average_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", 0.5)
    # No keepalive: the rule on the frame alone ends it.
    async with run_server(durability="os", ping_interval=None) as server:
        async with attach(server, role="agent") as (peer, _):
            rate = MIN_LINK_RATE * 2  # above the floor: taken whole
            head, payload = masked_frame(event_frame(8 * KIB))
            peer.ws.transport.write(head)
            for start in range(0, len(payload), rate // 10):
                peer.ws.transport.write(payload[start : start + rate // 10])
                await asyncio.sleep(0.1)
            assert (await peer.recv_type("ack"))["seq"] == 1
        async with attach(server, role="agent") as (peer, _):
            rate = MIN_LINK_RATE // 4
            opened = time.monotonic()
            trickling = asyncio.ensure_future(trickle(peer, event_frame(8 * KIB), rate, 10.0))
            try:
                code, reason = await close_of(peer)
            finally:
                trickling.cancel()
                await asyncio.gather(trickling, return_exceptions=True)
            assert (code, reason) == (CloseCode.TOO_SLOW, arriving_frames.TOO_SLOW)
            # Past the grace, 1,024 bytes a second are owed, 256 come: closed at the
            # first read after 0.67 s.
            assert time.monotonic() - opened < 3.0
        assert arriving(server) == 0


async def send_pongs(transport: Any, rate: int) -> None:
    """Unsolicited Pongs of 125 bytes at about ``rate`` bytes a second, until closed:
    signs of life for the keepalive, none of them a message's bytes."""
    head, payload = masked_frame(b"p" * 125, opcode=0xA)
    per_tick = max(1, rate // 10 // len(head + payload))
    while not transport.is_closing():
        transport.write((head + payload) * per_tick)
        await asyncio.sleep(0.1)


async def test_pongs_between_fragments_do_not_keep_a_stalled_message_arriving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", 0.5)
    async with run_server(durability="os", ping_interval=None) as server:
        async with attach(server, role="agent") as (peer, _):
            transport = peer.ws.transport
            head, payload = masked_frame(event_frame(8 * KIB)[:KIB], fin=False)
            transport.write(head + payload)
            await until(lambda: arriving(server) == KIB + arriving_frames.FRAGMENT_BYTES)
            opened = time.monotonic()
            ponging = asyncio.ensure_future(send_pongs(transport, 4 * MIN_LINK_RATE))
            try:
                code, reason = await asyncio.wait_for(close_of(peer), 5.0)
            except TimeoutError:
                pytest.fail("a message stalled behind Pongs at 4 KiB/s was still arriving")
            finally:
                ponging.cancel()
                await asyncio.gather(ponging, return_exceptions=True)
            assert (code, reason) == (CloseCode.TOO_SLOW, arriving_frames.TOO_SLOW)
            # 1 KiB of the message, past a grace of 0.5 s: owed by 1.5 s, closed at the
            # first Pong after.
            assert time.monotonic() - opened < 3.0
        assert arriving(server) == 0 and not server.arriving_frames._holders


async def test_fragments_at_twice_the_floor_with_pings_between_are_acked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", 0.5)
    async with run_server(durability="os", ping_interval=None) as server:
        async with attach(server, role="agent") as (peer, _):
            transport = peer.ws.transport
            message = event_frame(6 * KIB)
            step = 2 * MIN_LINK_RATE // 10
            ping_head, ping_payload = masked_frame(b"i" * 100, opcode=0x9)
            for start in range(0, len(message), step):
                last = start + step >= len(message)
                head, payload = masked_frame(
                    message[start : start + step], opcode=0x0 if start else 0x1, fin=last
                )
                transport.write(head + payload + (b"" if last else ping_head + ping_payload))
                await asyncio.sleep(0.1)
            assert (await peer.recv_type("ack", timeout=10))["seq"] == 1
        assert arriving(server) == 0 and not server.arriving_frames._holders


def event_of_exactly(size: int) -> bytes:
    """An event frame of exactly ``size`` bytes of JSON, 1,024 of them in a field the
    server ignores: its event leaves room for the envelope of the frames viewers get it
    in (docs/protocol.md, MessagePack), so it is stored."""
    base = {"type": "event", "id": 1, "key": "k1", "pad": "p" * 1024, "event": token("")}
    overhead = len(json.dumps(base))
    frame = {**base, "event": token("x" * (size - overhead))}
    encoded = json.dumps(frame).encode()
    assert len(encoded) == size
    return encoded


async def test_a_message_of_the_largest_size_fits_the_share_with_the_next_head() -> None:
    # The share is --max-frame-bytes here (a sixteenth of the budget is less): a
    # message of that size, in fragments, with the head of its last (empty) fragment
    # split across reads, holds the whole size and a byte of that head at once.
    overrides: dict[str, Any] = {"memory_budget": 2 * 1024 * KIB, "max_frame_bytes": 256 * KIB}
    async with run_server(durability="os", **overrides) as server:
        assert server.arriving_frames.limit >= 256 * KIB
        async with attach(server, role="agent") as (peer, _):
            transport = peer.ws.transport
            message = event_of_exactly(256 * KIB)
            head, payload = masked_frame(message[: 200 * KIB], fin=False)
            transport.write(head + payload)
            fragment = arriving_frames.FRAGMENT_BYTES
            await until(lambda: arriving(server) == 200 * KIB + fragment)
            last_head, _ = masked_frame(b"", opcode=0x0)
            head, payload = masked_frame(message[200 * KIB :], opcode=0x0, fin=False)
            transport.write(head + payload + last_head[:3])
            # Its head's first two bytes are parsed, the third waits with the mask's.
            held = 256 * KIB + 1 + 2 * fragment
            await until(lambda: arriving(server) == held or transport.is_closing())
            assert not transport.is_closing(), "closed for a message of the largest size"
            transport.write(last_head[3:])
            assert (await peer.recv_type("ack"))["seq"] == 1
        assert arriving(server) == 0 and not server.arriving_frames._holders


async def test_a_peer_that_never_answers_the_close_is_cut_at_the_close_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(arriving_frames, "ARRIVAL_GRACE", 0.5)
    # No keepalive to end it: the close's own deadline must.
    async with run_server(durability="os", ping_interval=None, close_timeout=1.0) as server:
        async with attach(server, role="agent") as (peer, _):
            transport = peer.ws.transport
            head, payload = masked_frame(event_frame(8 * KIB)[: 2 * KIB], fin=False)
            transport.write(head + payload)
            await until(lambda: arriving(server) == 2 * KIB + arriving_frames.FRAGMENT_BYTES)
            transport.pause_reading()  # it never sees the 4429, nor answers it
            head, payload = masked_frame(b"a" * KIB, opcode=0x0)
            transport.write(head)
            started = time.monotonic()
            # A byte every 0.2 s: 2 KiB of the message are owed by 2.5 s, the close
            # timeout runs out a second later.
            for byte in range(40):
                if not server._open_connections:
                    break
                transport.write(payload[byte : byte + 1])
                await asyncio.sleep(0.2)
            assert not server._open_connections, "the closed connection is still there"
            assert time.monotonic() - started < 6.0
            assert arriving(server) == 0 and not server.arriving_frames._holders
            transport.abort()
