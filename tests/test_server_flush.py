"""Frames written to connections' sockets by the flusher at the end of the producer's
turn of the event loop (server/flush.py), beside those a writer task sends: what the
peers read is each frame once, in order, and nothing is written once the connection's
close is under way.
"""

from __future__ import annotations

import asyncio
import struct

from structlog.testing import capture_logs
from websockets.protocol import OPEN

from tests.support import attach, run_server, token
from tests.test_replay_server import (
    bytes_until_close,
    events_and_close,
    publish,
    server_frames,
    stalled_resumer,
)
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
