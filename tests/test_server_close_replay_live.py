"""A session closed while resumers' replays are being sent, with live events queued behind
the replays: each resumer gets its replay, then the live events, each once and in
order, then ``closed`` and the close, and nothing after ``closed``; several resumers at
once, one of them reading nothing; a replay whose store read fails after the close
(the session deleted meanwhile) ends with what it sent, ``closed`` and the close, no
live event after the gap; the cut at the close's bound on a connection with
permessage-deflate; an expired session taken again by a new one at once while its
replay goes on; and twenty resumers that read nothing, cut and dropped in time."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import zlib
from typing import Any

from tests.replay_support import bytes_until_close, metric, publish, stalled_resumer
from tests.support import attach, run_server, token
from tests.test_server_close_replay import frames_until_close, kinds, seqs_of
from tests.test_server_lifecycle import eventually
from tests.test_wire_floods import masked_frame

COUNT, SIZE, LIVE = 1500, 10_000, 40


def check_stream(frames: list[dict[str, Any]], total: int, whole: bool) -> None:
    """Events 1.. each once and in order (all ``total`` if ``whole``), then ``closed``
    last: nothing after it."""
    seqs = seqs_of(frames)
    assert seqs == list(range(1, len(seqs) + 1)), seqs[:5]
    if whole:
        assert len(seqs) == total, f"{len(seqs)} of {total}"
    assert kinds(frames)[-1] == "closed", kinds(frames)[-3:]


async def test_live_events_queued_behind_replays_then_closed() -> None:
    # The readers read their 22 MB together, whole within the close's bound, while the
    # stalled peer's replay is cut at it: under load (four test processes on two cores,
    # CPU stolen) the reads took over 3 s.
    bound = 10.0
    async with run_server(rate_limit_bytes=0, close_timeout=bound) as server:
        loop = asyncio.get_running_loop()
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, COUNT, size=SIZE)
            stalled = await loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
            try:
                async with (
                    attach(server, session_id, last_seq=0) as (first, one),
                    attach(server, session_id, last_seq=COUNT // 2) as (second, two),
                ):
                    assert (one["replay"], two["replay"]) == (COUNT, COUNT - COUNT // 2)
                    await asyncio.sleep(0.3)  # nobody reads: the replays back up
                    # Live events, queued behind the replays, then the close.
                    await publish(agent, LIVE, size=100)
                    await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                    cut_by = loop.time() + bound  # (the server's timer, on this loop)
                    ends = await asyncio.gather(first.closed(timeout=30), second.closed(timeout=30))
                    for (code, frames), start in zip(ends, (0, COUNT // 2), strict=True):
                        assert code == 1000
                        seqs = seqs_of(frames)
                        assert seqs == list(range(start + 1, COUNT + LIVE + 1)), (
                            len(seqs),
                            seqs[:3],
                            seqs[-3:],
                        )
                        assert kinds(frames)[-1] == "closed"
                await asyncio.sleep(cut_by + 0.3 - loop.time())
                frames, code = await loop.run_in_executor(None, frames_until_close, stalled, 5.0)
            finally:
                stalled.close()
        # The stalled one: cut at the bound, what it got gap-free, no live event after
        # the gap, and closed last.
        check_stream(frames, COUNT + LIVE, whole=False)
        assert code == 1000
        await eventually(lambda: server.manager.live_actor(session_id) is None)
        await eventually(lambda: server.manager.budget.used == 0)


async def test_a_replay_whose_read_fails_after_the_close() -> None:
    """The session closes while a resumer's replay reads the store (a ring too small to
    hold it), then it is deleted: the replay's next read fails. The resumer gets the
    pages sent before, then ``closed`` and the close; no live event after the gap."""
    async with run_server(rate_limit_bytes=0, ring_bytes=64 * 1024, close_timeout=5.0) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, COUNT, size=SIZE)
            async with attach(server, session_id, last_seq=0) as (resumer, resumed):
                assert resumed["replay"] == COUNT
                await asyncio.sleep(0.3)
                await publish(agent, LIVE, size=100)
                await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                await server.manager.storage.delete_session(session_id)
                code, frames = await resumer.closed(timeout=10)
    seqs = seqs_of(frames)
    assert seqs == list(range(1, len(seqs) + 1)), seqs[:5]
    assert len(seqs) < COUNT, "the delete should have cut the replay"
    assert kinds(frames)[-1] == "closed" and code == 1000, (kinds(frames)[-3:], code)


def deflate_resumer(port: int, session_id: str) -> socket.socket:
    """A peer that negotiates permessage-deflate, resumes from 0, and reads nothing (a
    tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /api/v1/stream/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(1)
    assert b" 101 " in answer.split(b"\r\n")[0], answer
    assert b"permessage-deflate" in answer, answer
    sock.sendall(masked_frame(json.dumps({"type": "hello", "last_seq": 0}).encode(), 1))
    return sock


def inflate_frames(sock: socket.socket, timeout: float) -> tuple[list[dict[str, Any]], int | None]:
    """What the deflate peer reads until the close: its text frames, inflated and
    decoded (one inflater: the server may keep its context), and the close code."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    data = bytes_until_close(sock, timeout)
    inflater = zlib.decompressobj(-15)
    frames: list[dict[str, Any]] = []
    code = None
    at = 0
    while at + 2 <= len(data):
        first, length, head = data[at], data[at + 1] & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        if at + head + length > len(data):
            break
        payload = data[at + head : at + head + length]
        at += head + length
        assert first & 0x80, "a fragmented frame"
        if first & 0x0F == 0x1:
            if first & 0x40:
                payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
            frames.append(json.loads(payload))
        elif first & 0x0F == 0x8:
            code = int.from_bytes(payload[:2], "big")
            break
    return frames, code


async def test_a_compressed_replay_cut_at_the_bound() -> None:
    """The cut of a replay past the close's bound (server/closing.py) on a connection
    with permessage-deflate: its frames go through websockets' compressor, one stream
    with the replay's: the peer inflates every frame, events gap-free, ``closed`` last,
    then the close."""
    bound = 2.0
    settings = {"rate_limit_bytes": 0, "close_timeout": bound, "compression": True}
    async with run_server(**settings) as server:
        loop = asyncio.get_running_loop()
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            # Events that do not compress much: random text.
            for i in range(COUNT):
                noise = base64.b64encode(os.urandom(SIZE * 3 // 4)).decode()
                await agent.send({"type": "event", "id": i, "event": token(f"{i}:{noise}")})
            for _ in range(COUNT):
                await agent.recv_type("ack", timeout=30)
            stalled = await loop.run_in_executor(None, deflate_resumer, server.port, session_id)
            try:
                await asyncio.sleep(0.5)
                await publish(agent, LIVE, size=100)
                await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                await asyncio.sleep(bound + 0.3)
                frames, code = await loop.run_in_executor(None, inflate_frames, stalled, 5.0)
            finally:
                stalled.close()
    check_stream(frames, COUNT + LIVE, whole=False)
    assert 0 < len(seqs_of(frames)) < COUNT
    assert code == 1000


async def test_an_expired_session_taken_again_while_its_replay_goes_on() -> None:
    """A session expires while a resumer's replay is sent (it goes on, within the
    close's bound); a peer attaches with ``create`` at once: the new session under the
    id is there without waiting for the old replay, and the old resumer gets the old
    log's events only (gap-free), then ``closed`` and 4404: nothing of the new one."""
    # The old resumer reads only after the new session's welcome, so its replay goes on
    # until the bound: a welcome kept for the old replay would come then at the earliest.
    # A bound of 60 s, and a welcome within a third of it, tell the two apart on a loaded
    # machine (the welcome within 1 s of a 5 s bound did not).
    ttl, bound = 3, 60.0
    async with run_server(rate_limit_bytes=0, default_ttl=ttl, close_timeout=bound) as server:
        loop = asyncio.get_running_loop()
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, COUNT, size=SIZE)
        async with attach(server, session_id, last_seq=0) as (resumer, resumed):
            assert resumed["replay"] == COUNT
            actor = server.manager.live_actor(session_id)
            assert actor is not None
            await eventually(lambda: not actor.accepting, 5 * ttl)  # a guard
            asked = loop.time()
            async with attach(server, session_id, create=True, role="agent") as (new, hello):
                waited = loop.time() - asked
                assert waited < bound / 3, f"the new session waited for the old replay: {waited}"
                assert hello["session"]["last_seq"] == 0
                await publish(new, 5, size=50)  # told apart by their size
                code, frames = await resumer.closed(timeout=10)
    seqs = seqs_of(frames)
    assert seqs == list(range(1, len(seqs) + 1)), seqs[:5]
    assert frames[-1] == {"type": "closed", "reason": "session expired"}, frames[-1]
    assert code == 4404
    contents = [f["event"]["content"] for f in frames if f["type"] == "event"]
    assert all(len(c) > SIZE for c in contents), "an event of the new session"


async def test_many_stalled_resumers_at_a_close_are_cut_and_dropped_in_time() -> None:
    """Twenty resumers from seq 0 that read nothing when the session closes: each is cut
    at the bound, then dropped a close timeout later at most; nothing is left of them
    (connections, pages in the memory budget, the actor)."""
    bound = 1.5
    async with run_server(rate_limit_bytes=0, close_timeout=bound) as server:
        # Dropped at 2 * bound after the close; without the server's own deadline a
        # socket whose close is overdue is dropped only at the keepalive's next Ping
        # (20 s), or never. Half that interval tells them apart on a loaded machine
        # (2 * bound + 1.5 s did not always).
        in_time = server.config.ping_interval / 2
        assert in_time > 2 * bound
        loop = asyncio.get_running_loop()
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            await publish(agent, COUNT // 3, size=SIZE)
            stalled = await asyncio.gather(
                *(
                    loop.run_in_executor(None, stalled_resumer, server.port, session_id, 0)
                    for _ in range(20)
                )
            )
            try:
                await asyncio.sleep(0.5)
                await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                closed_at = loop.time()
                await eventually(
                    lambda: metric(server.metrics.render().decode(), "bamboo_connections") == 0,
                    in_time,
                )
                assert loop.time() - closed_at < in_time
            finally:
                for sock in stalled:
                    sock.close()
        await eventually(lambda: server.manager.live_actor(session_id) is None)
        await eventually(lambda: server.manager.budget.used == 0)
