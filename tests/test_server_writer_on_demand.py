"""A connection's writer task runs only while it has something to await (a replay, the
close, a socket whose buffer is full) and ends once its outbox is empty; the flusher
writes the rest (server/writer_life.py, server/flush.py). These tests start and end
writers in every way a peer can make them, and check what the peer reads: its welcome,
then its replay (oldest first), then live events, with no gap and no duplicate, and
the close it is owed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import time
from typing import Any

from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.connection import Connection
from bamboo_session.server.flush import WebSocketSink
from tests.replay_support import (
    events_and_close,
    frame_bounds,
    kernel_send_buffer_max,
    publish,
    stalled_resumer,
)
from tests.support import Peer, attach, run_server, token
from tests.test_server_lifecycle import eventually

MIB = 1024 * 1024


def writer_tasks() -> list[asyncio.Task[Any]]:
    """The connections' writer tasks running in this process (server/connection.py)."""
    return [task for task in asyncio.all_tasks() if task.get_name().startswith("writer:")]


class RawReader:
    """A raw socket's server frames, parsed as they come: the seqs of its events, and
    the types of its text frames, in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = bytearray()
        self.at = 0  # where the next unparsed frame starts
        self.seqs: list[int] = []
        self.types: list[str] = []

    def read_through(self, last_seq: int, limit: float) -> list[int]:
        """Reads (blocking: run it in a thread) until the event with ``last_seq`` came,
        the socket ended, or ``limit`` seconds passed; the seqs of every event so far."""
        self.sock.settimeout(0.2)
        ends = time.monotonic() + limit
        while time.monotonic() < ends and not (self.seqs and self.seqs[-1] >= last_seq):
            with contextlib.suppress(TimeoutError):
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                self.data += chunk
                self._parse()
        return self.seqs

    def _parse(self) -> None:
        for opcode, start, end in frame_bounds(self.data, self.at):
            if opcode == 0x1:
                frame = json.loads(self.data[start:end])
                self.types.append(frame["type"])
                if frame["type"] == "event":
                    self.seqs.append(frame["seq"])
            self.at = end


async def read_all(peer: Peer, through: int) -> list[int]:
    """The seqs of the events ``peer`` reads until the one with ``through``."""
    seqs: list[int] = []
    while not seqs or seqs[-1] < through:
        seqs.append((await peer.recv_type("event", timeout=20))["seq"])
    return seqs


async def test_a_peer_that_fills_its_socket_then_drains_it_gets_each_event_once() -> None:
    # Each round fills the peer's socket (the flusher finds it full and starts a writer,
    # which waits for room), then the peer reads it all (the writer ends), then a few
    # live events go through the flusher again. Three rounds: starts and ends alternate.
    size = 200_000
    burst = (kernel_send_buffer_max() + 2 * MIB) // size + 1
    # No keepalive: the raw peer does not answer pings.
    settings: dict[str, Any] = {"send_queue_bytes": 64 * MIB, "memory_budget": 512 * MIB}
    settings["ping_interval"] = None
    async with run_server(durability="os", rate_limit_bytes=0, **settings) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            sock = await asyncio.to_thread(stalled_resumer, server.port, session_id, 0)
            try:
                reader = RawReader(sock)
                published = 0
                for _ in range(3):
                    await publish(agent, burst, size=size)
                    published += burst
                    await eventually(lambda: len(writer_tasks()) == 1)
                    await publish(agent, 3)
                    published += 3
                    seqs = await asyncio.to_thread(reader.read_through, published, 60)
                    assert seqs == list(range(1, published + 1))
                    await eventually(lambda: not writer_tasks())
                    await publish(agent, 2)
                    published += 2
                    seqs = await asyncio.to_thread(reader.read_through, published, 20)
                    assert seqs == list(range(1, published + 1))
                    assert not writer_tasks()
                assert reader.types[0] == "welcome" and reader.types.count("welcome") == 1
            finally:
                sock.close()


async def test_resumes_under_a_live_stream_get_replay_then_live_without_gap() -> None:
    # A ring of 8 events: most replays read pages from the store (the writer awaits
    # them) while the agent goes on publishing; each resumer must read every event
    # after its last_seq once, in order, to the end.
    total, resumers = 400, 8
    async with run_server(durability="os", ring_size=8) as server:
        async with contextlib.AsyncExitStack() as stack:
            agent, welcome = await stack.enter_async_context(attach(server, role="agent"))
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            await publish(agent, 40)
            publishing = asyncio.create_task(publish_in_steps(agent, 40, total))
            readers = []
            for index in range(resumers):
                last_seq = index * 5
                peer, back = await stack.enter_async_context(
                    attach(server, session_id, last_seq=last_seq, epoch=epoch)
                )
                assert back["resumed"] and back["replay"] == back["last_seq"] - last_seq
                readers.append((last_seq, asyncio.create_task(read_all(peer, total))))
                await asyncio.sleep(0.01 * index)  # joins at several points of the stream
            await asyncio.wait_for(publishing, 60)
            for last_seq, reading in readers:
                assert await asyncio.wait_for(reading, 30) == list(range(last_seq + 1, total + 1))
            await eventually(lambda: not writer_tasks())


async def publish_in_steps(agent: Peer, done: int, total: int) -> None:
    """Events ``done + 1`` to ``total``, ten in flight at a time."""
    while done < total:
        step = min(10, total - done)
        for index in range(step):
            await agent.send({"type": "event", "id": done + index, "event": token("live")})
        for _ in range(step):
            await agent.recv_type("ack", timeout=30)
        done += step


async def test_a_close_finds_idle_replaying_and_stalled_peers_alike() -> None:
    # The session is closed while one peer is idle (no writer), one is replaying from
    # the store (a writer at work), one has a full socket (a writer waiting for room):
    # the first two get every event, `closed` and 1000; the stalled one is closed
    # within the close timeout.
    async with run_server(durability="os", ring_size=4, close_timeout=2) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id, epoch = welcome["session"]["id"], welcome["epoch"]
            await publish(agent, 300, size=2000)
            async with (
                attach(server, session_id) as (idle, _),
                attach(server, session_id, last_seq=0, epoch=epoch) as (replaying, back),
            ):
                assert back["replay"] == 300
                stalled = await asyncio.to_thread(stalled_resumer, server.port, session_id, 0)
                try:
                    await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
                    code, frames = await idle.closed(timeout=10)
                    assert (code, frames[-1]["type"]) == (1000, "closed")
                    code, frames = await replaying.closed(timeout=20)
                    seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
                    assert seqs == list(range(1, 301))
                    assert (code, frames[-1]["type"]) == (1000, "closed")
                    # Read at last: the socket ends (close frame, or dropped at the
                    # close timeout), with the events it got in order.
                    data, ended = await asyncio.to_thread(read_to_end, stalled, 20)
                    assert ended
                    seqs, _ = events_and_close(data)
                    assert seqs == list(range(1, len(seqs) + 1))
                finally:
                    stalled.close()
            await eventually(lambda: not writer_tasks())


def read_to_end(sock: socket.socket, limit: float) -> tuple[bytes, bool]:
    """What ``sock`` reads until the server ends it (blocking: run it in a thread), and
    whether it did within ``limit`` seconds."""
    sock.settimeout(0.2)
    data = bytearray()
    ends = time.monotonic() + limit
    while time.monotonic() < ends:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(data), True
        if not chunk:
            return bytes(data), True
        data += chunk
    return bytes(data), False


async def test_with_compression_every_frame_goes_through_a_writer_that_ends() -> None:
    # permessage-deflate: the flusher leaves every frame to a writer (websockets must
    # compress it), so each burst starts one; the peer still gets each event once.
    async with run_server(compression=True) as server:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            url = f"ws://127.0.0.1:{server.port}/api/v1/stream/{session_id}"
            async with connect(url, compression="deflate") as ws:
                assert ws.protocol.extensions
                viewer = Peer(ws)
                await viewer.send({"type": "hello"})
                assert (await viewer.recv())["type"] == "welcome"
                reading = asyncio.create_task(read_all(viewer, 200))
                await publish_in_steps(agent, 0, 200)
                assert await asyncio.wait_for(reading, 30) == list(range(1, 201))
                await eventually(lambda: not writer_tasks())
                assert (await viewer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1


def writer_tasks_held() -> list[asyncio.Task[Any]]:
    """Every writer task something still refers to, ended or not."""
    gc.collect()
    return [
        task
        for task in gc.get_objects()
        if isinstance(task, asyncio.Task) and task.get_name().startswith("writer:")
    ]


async def test_a_connection_whose_writer_ended_holds_no_task() -> None:
    # A resumer's replay started a writer; once it is sent, the connection is idle and
    # holds no task, ended or not (about 0.5 KiB with its coroutine and context).
    async with run_server() as server, attach(server, "held", create=True) as (agent, welcome):
        await publish(agent, 3)
        async with attach(server, "held", last_seq=0, epoch=welcome["epoch"]) as (viewer, _):
            assert await read_all(viewer, 3) == [1, 2, 3]
            await eventually(lambda: not writer_tasks())
            assert (await viewer.request({"type": "ping", "id": 1}, "pong"))["id"] == 1
            assert not writer_tasks_held()


async def test_a_fault_writing_one_connections_frames_drops_it_and_spares_the_others(
    monkeypatch: Any,
) -> None:
    """The flusher writes every connection that got frames in one turn: a fault of the
    server's own in one connection's write (injected here: nothing known raises there)
    ends that connection at once, without a close frame, so its client resumes and gets
    the events; the session's actor goes on, and the other viewer of the same turn gets
    each delivery as if nothing happened."""
    faulty: set[int] = set()  # the client port of the connection whose write fails once
    write = WebSocketSink.write

    def write_or_fail(sink: WebSocketSink, frames: list[Any]) -> bool:
        port = sink.ws.remote_address[1]
        if port in faulty:
            faulty.discard(port)
            raise RuntimeError("a fault injected into one connection's write")
        return write(sink, frames)

    monkeypatch.setattr(WebSocketSink, "write", write_or_fail)
    async with run_server() as server:
        async with (
            attach(server, "s", create=True) as (victim, welcome),
            attach(server, "s") as (bystander, _),
            attach(server, "s", role="agent") as (agent, _),
        ):
            await victim.recv_type("presence")  # the bystander joined
            await victim.recv_type("presence")  # the agent joined
            await bystander.recv_type("presence")
            faulty.add(victim.ws.local_address[1])
            with capture_logs(processors=[merge_contextvars]) as logs:
                await publish(agent, 1)
            assert (await bystander.recv_type("event", timeout=5))["seq"] == 1
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await victim.recv(5)
            assert victim.ws.close_code == 1006  # no close frame: resume
            # The one line that says why names the connection dropped, not whichever
            # task's context scheduled that turn's flush (the agent's, its session's actor).
            [fault] = [line for line in logs if line.get("exc_info")]
            assert fault["log_level"] == "error"
            assert fault["connection_id"] == welcome["connection_id"]
            items = [{"event": token(f"after {i}")} for i in range(3)]
            await agent.request({"type": "batch", "id": "b", "items": items}, "acks")
            # The session's actor went on: the bystander gets the next delivery whole.
            assert [(await bystander.recv_type("event"))["seq"] for _ in range(3)] == [2, 3, 4]
        async with attach(server, "s", last_seq=0, epoch=welcome["epoch"]) as (again, back):
            assert (back["resumed"], back["replay"]) == (True, 4)
            assert [(await again.recv_type("event"))["seq"] for _ in range(4)] == [1, 2, 3, 4]


async def test_a_writer_started_from_the_sessions_actor_logs_as_its_own_connection(
    monkeypatch: Any,
) -> None:
    """A session closed by one of its clients queues ``closed`` and the close on every
    connection in its actor's turn, so the flusher starts each one's writer for the close
    from there. A fault in one of those writers (injected: nothing known raises there)
    is logged naming that connection, not the actor's session alone nor the client
    that closed the session; the connection still closes, with 1011."""
    faulty: set[str] = set()  # the connection whose close, by its writer, fails once
    close = Connection._close

    async def close_or_fail(connection: Connection, request: Any) -> None:
        if connection.connection_id in faulty:
            faulty.discard(connection.connection_id)
            raise RuntimeError("a fault injected into one connection's writer")
        await close(connection, request)

    monkeypatch.setattr(Connection, "_close", close_or_fail)
    async with run_server() as server:
        async with (
            attach(server, "s", create=True) as (closer, _),
            attach(server, "s") as (viewer, welcome),
        ):
            await closer.recv_type("presence")  # the viewer joined
            faulty.add(welcome["connection_id"])
            with capture_logs(processors=[merge_contextvars]) as logs:
                await closer.request({"type": "state", "id": 1, "state": "closed"}, "ack")
                code, frames = await viewer.closed()
            assert [frame["type"] for frame in frames] == ["closed"]
            assert code == 1011
            [fault] = [line for line in logs if line.get("exc_info")]
            assert fault["event"] == "connection writer failed"
            assert fault["connection_id"] == welcome["connection_id"]
            assert fault["session_id"] == "s"
