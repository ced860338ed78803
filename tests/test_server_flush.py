"""Frames written to connections' sockets by the flusher at the end of the producer's
turn of the event loop (server/flush.py), beside those a writer task sends: what the
peers read is each frame once, in order, within the outbox's bounds, and nothing is
written once the connection's close is under way.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from structlog.testing import capture_logs
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN

from bamboo_session.server.flush import unframe, websocket_frame
from tests.replay_support import (
    bytes_until_close,
    events_and_close,
    frame_bounds,
    publish,
    server_frames,
    stalled_resumer,
)
from tests.support import Peer, attach, run_server, token
from tests.test_server_lifecycle import eventually
from tests.test_wire_floods import masked_frame


async def test_a_batchs_events_lone_events_and_pongs_reach_each_viewer_in_order() -> None:
    # A batch's events are given to the room in one turn and written together at its
    # end; lone events between them go one a turn, and a viewer's pong is queued from
    # its reader's turn amid the events.
    async with (
        run_server() as server,
        attach(server, "o", create=True, role="agent") as (agent, _),
        attach(server, "o") as (pinger, _),
        attach(server, "o") as (viewer, _),
    ):
        await pinger.recv_type("presence")  # the viewer joined
        seq, expected = 0, []
        for round_ in range(20):
            items = [{"event": token(f"{round_}:{i}")} for i in range(5)]
            await pinger.send({"type": "ping", "id": round_})
            acks = await agent.request({"type": "batch", "id": round_, "items": items}, "acks")
            assert acks["seqs"] == list(range(seq + 1, seq + 6))
            frame = {"type": "event", "id": f"lone-{round_}", "event": token(f"lone {round_}")}
            assert (await agent.request(frame, "ack"))["seq"] == seq + 6
            seq += 6
            expected += [*(item["event"]["content"] for item in items), f"lone {round_}"]
        for peer in (pinger, viewer):
            events = [await peer.recv_type("event") for _ in range(seq)]
            assert [event["seq"] for event in events] == list(range(1, seq + 1))
            assert [event["event"]["content"] for event in events] == expected
        assert (await pinger.request({"type": "ping", "id": "last"}, "pong"))["id"] == "last"


async def test_a_viewer_whose_close_is_under_way_is_written_nothing_more() -> None:
    # A raw viewer sends its close frame and keeps its socket open: the server replies
    # with its own close and shuts its side for writing (websockets' close handshake),
    # while the viewer's outbox still takes the events that follow until the
    # connection ends. None of them may be written by the flusher: they would come
    # after the close frame, on a socket whose write side is shut (a fault the server
    # would log and answer by dropping the connection).
    async with (
        run_server(ping_interval=None) as server,  # the raw viewer answers no ping
        attach(server, "c", create=True, role="agent") as (agent, _),
    ):
        sock = await asyncio.to_thread(stalled_resumer, server.port, "c", 0)
        try:
            await agent.recv_type("presence")  # the viewer joined
            await publish(agent, 3)
            actor = server.manager.live_actor("c")
            assert actor is not None
            [viewer] = [out for out in actor.room.outboxes.values() if out.role != "agent"]
            assert viewer.sink is not None
            protocol = viewer.sink.ws.protocol  # type: ignore[attr-defined]
            await asyncio.to_thread(sock.sendall, masked_frame(struct.pack("!H", 1000), 0x8))
            await eventually(lambda: protocol.state is not OPEN)
            with capture_logs() as logs:
                await publish(agent, 20)
            data = await asyncio.to_thread(bytes_until_close, sock, 10)
        finally:
            sock.close()
    assert events_and_close(data) == ([1, 2, 3], 1000)
    assert [opcode for opcode, _ in server_frames(data)][-1] == 0x8  # nothing after it
    assert [line for line in logs if line["log_level"] == "error"] == []


def read_events(sock: socket.socket, count: int, timeout: float) -> list[int]:
    """The seqs of the first ``count`` event frames a raw peer reads (fewer if they do
    not come within ``timeout``), each frame parsed once."""
    sock.settimeout(timeout)
    data = bytearray()
    seqs: list[int] = []
    at = 0
    while len(seqs) < count:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        data += chunk
        for opcode, start, end in frame_bounds(data, at):
            if opcode == 0x1 and json.loads(data[start:end])["type"] == "event":
                seqs.append(json.loads(data[start:end])["seq"])
            at = end
    return seqs


async def test_a_viewer_that_falls_behind_and_catches_up_reads_every_event_in_order() -> None:
    # A raw viewer reads nothing at first: its socket fills, writing pauses, and what
    # follows is queued for its writer; once it reads, the queue drains while batches
    # and lone events keep coming, and then they go by the flusher again (the writer
    # gone). Whichever way each went, it reads each event once and in order.
    async with (
        run_server(ping_interval=None) as server,  # the raw viewer answers no ping
        attach(server, "lag", create=True, role="agent") as (agent, _),
    ):
        sock = await asyncio.to_thread(stalled_resumer, server.port, "lag", 0)
        try:
            await agent.recv_type("presence")  # the viewer joined
            actor = server.manager.live_actor("lag")
            assert actor is not None
            [viewer] = [out for out in actor.room.outboxes.values() if out.role != "agent"]
            seq = 0
            while not viewer.sink.ws.paused:  # type: ignore[union-attr]
                assert seq < 2000, "the viewer's socket never filled"
                await publish(agent, 1, size=20_000)
                seq += 1
            await send_batches(agent, 3, 4, "p" * 20_000)
            seq += 12
            assert len(viewer) > 0  # queued behind the paused socket, not written
            reading = asyncio.create_task(asyncio.to_thread(read_events, sock, seq + 40, 20))
            for round_ in range(10):  # while the queue drains, and after
                await send_batches(agent, 1, 3, "b" * 20_000 if round_ % 2 else "b")
                await publish(agent, 1, size=20_000 if round_ % 2 else 10)
            seq += 40
            assert await reading == list(range(1, seq + 1))
        finally:
            sock.close()


async def send_batches(agent: Peer, count: int, items: int, content: str) -> None:
    """``count`` batch frames of ``items`` events each, each acknowledged in turn."""
    for round_ in range(count):
        batch = [{"event": token(f"{round_}:{i}:{content}")} for i in range(items)]
        await agent.request({"type": "batch", "id": round_, "items": batch}, "acks")


async def test_a_batch_over_a_viewers_send_queue_closes_it_as_frame_by_frame_would() -> None:
    # A batch's events reach each viewer in one turn of the loop, all queued before the
    # flusher writes them; one over the queue's bounds (4 frames; 8,192 bytes, where an
    # event counts its JSON and EVENT_FRAME_OVERHEAD, 352) closes the viewer with 4429
    # as soon as its frame is one too many, even with the socket free to take them
    # (the bounds hold however a delivery is handed over), and it resumes from the log.
    big = "k" * 2000  # about 2,380 bytes counted: three fit in 8,192, four do not
    async with (
        run_server(send_queue_frames=4, send_queue_bytes=8192) as server,
        attach(server, "q", create=True, role="agent") as (agent, _),
    ):
        async with attach(server, "q") as (viewer, welcome):
            await agent.recv_type("presence")  # the viewer joined
            await send_batches(agent, 1, 4, "four fit")
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(4)] == [1, 2, 3, 4]
            await send_batches(agent, 1, 3, big)
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(3)] == [5, 6, 7]
            await send_batches(agent, 1, 5, "five do not")
            assert await closed_without_events(viewer) == 4429
        async with attach(server, "q") as (late, _):
            await agent.recv_type("presence")  # the late viewer joined
            await send_batches(agent, 1, 4, big)
            assert await closed_without_events(late) == 4429
        async with attach(server, "q", last_seq=7, epoch=welcome["epoch"]) as (again, back):
            assert (back["resumed"], back["replay"]) == (True, 9)
            seqs = [(await again.recv_type("event"))["seq"] for _ in range(9)]
            assert seqs == list(range(8, 17))


async def closed_without_events(peer: Peer) -> int | None:
    """The close code of a peer the server closes, which read no event meanwhile."""
    code, frames = await peer.closed()
    assert [frame for frame in frames if frame["type"] == "event"] == []
    return code


def test_every_frame_the_server_makes_is_the_one_websockets_would_send() -> None:
    """websocket_frame's headers, short ones from its table, against websockets' own
    serializer at each boundary of the length's encoding."""
    for length in (0, 1, 125, 126, 127, 65535, 65536):
        payload = b"x" * length
        for text, opcode in ((True, Opcode.TEXT), (False, Opcode.BINARY)):
            framed = websocket_frame(payload, text)
            assert framed == Frame(opcode, payload).serialize(mask=False, extensions=[])
            assert unframe(framed) == (payload, text)
