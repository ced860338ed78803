"""A stop as a mix of peers sees it: idle readers (JSON, msgpack, permessage-deflate),
one whose socket is full, one whose transport still buffers bytes, one in the middle of
a replay. Each gets what was queued for it, then ``closed``, then close 1012, nothing
after it, then the end of the TCP stream, whichever way its close went out (in one
write with the frames ahead of it, WebSocketSink.close_at_once, or by its writer task);
and an ordinary close, outside a stop, is what it was."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach, run_server, token
from tests.test_server_lifecycle import eventually
from tests.test_server_shutdown import RESTARTING, MutePeer, publish_acked

EVENTS = 40  # of 60 KB: 2.4 MB, far past what a peer with a 4 KB buffer takes unread


def event_seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [frame["seq"] for frame in frames if frame["type"] == "event"]


async def test_sigterm_gives_each_kind_of_peer_its_frames_closed_1012_then_the_end(
    tmp_path: Path,
) -> None:
    flags = ("--shutdown-grace", "30", "--close-timeout", "60", "--compression", "true")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    with server:
        port = server.port
        plain, _ = await MutePeer.attach(port, "s1", create=True)
        packed, _ = await MutePeer.attach(port, "s1", msgpack=True)
        deflated, _ = await MutePeer.attach(port, "s1", compress=True)
        stuck, _ = await MutePeer.attach(port, "s1", receive_buffer=4096)
        readers = [
            (peer, asyncio.ensure_future(peer.until_close())) for peer in (plain, packed, deflated)
        ]
        async with attach(server, "s1", role="agent") as (agent, welcome):
            await publish_acked(agent, EVENTS)
            resuming, hello = await MutePeer.attach(
                port, "s1", receive_buffer=4096, last_seq=0, epoch=welcome["epoch"]
            )
            assert hello["replay"] == EVENTS
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop, 60))
            for _peer, reading in readers:
                frames, code = await reading
                assert code == 1012 and frames[-1] == RESTARTING, frames[-3:]
                assert event_seqs(frames) == list(range(1, EVENTS + 1))
            assert bool(deflated.protocol.extensions) and not plain.protocol.extensions
            frames, code = await stuck.until_close()  # it reads again only now
            assert code == 1012 and frames[-1] == RESTARTING
            assert event_seqs(frames) == list(range(1, EVENTS + 1))
            frames, code = await resuming.until_close()
            # Cut where the stop found it: a prefix of the log, with no gap.
            assert code == 1012 and frames[-1] == RESTARTING
            assert event_seqs(frames) == list(range(1, len(event_seqs(frames)) + 1))
            agent_code, agent_frames = await agent.closed(timeout=30)
            assert agent_code == 1012 and agent_frames[-1] == RESTARTING
            for peer in (plain, packed, deflated, stuck, resuming):
                assert await peer.ended()
                peer.writer.close()
            assert await stopping == 0
    records = server.log_records()
    assert_no_tracebacks(records)
    assert not [r for r in records if r["level"] in ("warning", "error")], records
    (stopped,) = (r for r in records if r["event"] == "stopped")
    assert stopped["connections"] == 6


class TappedPeer(MutePeer):
    """A :class:`MutePeer` that keeps every byte the server sent after its answer to
    the upgrade, to read the frames off the wire itself: websockets' client drops what
    follows a close frame unseen."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.raw = bytearray()

    async def next_event(self) -> Any:
        while not self.events:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            assert data, "the server ended the connection"
            self.raw += data
            self.protocol.receive_data(data)
            self.events.extend(self.protocol.events_received())
        return self.events.popleft()

    async def rest_until_fin(self) -> None:
        """What comes after, up to the server's FIN (a reset fails here)."""
        while data := await asyncio.wait_for(self.reader.read(65536), 10):
            self.raw += data

    def opcodes(self) -> list[int]:
        """The opcodes of the server's frames, in order (unmasked, uncompressed)."""
        data = bytes(self.raw).partition(b"\r\n\r\n")[2]
        opcodes, at = [], 0
        while at < len(data):
            opcodes.append(data[at] & 0x0F)
            length, at = data[at + 1] & 0x7F, at + 2
            if length >= 126:
                width = 2 if length == 126 else 8
                length, at = int.from_bytes(data[at : at + width], "big"), at + width
            at += length
        assert at == len(data), "a frame cut short"
        return opcodes


async def test_after_the_close_frame_of_a_stop_nothing_more_goes_out_then_fin(
    tmp_path: Path,
) -> None:
    # Keepalive pings every 20 ms (never answered: no timeout), and an agent that
    # keeps publishing while the stop begins: neither a ping nor an event may follow
    # a close written with the frames ahead of it (WebSocketSink.close_at_once).
    flags = ("--shutdown-grace", "30", "--close-timeout", "60")
    flags += ("--ping-interval", "0.02", "--ping-timeout", "none")
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    with server:
        port = server.port
        peers = [(await TappedPeer.attach(port, "s1", create=True))[0] for _ in range(4)]
        readers = [asyncio.ensure_future(peer.until_close()) for peer in peers]
        async with attach(server, "s1", role="agent") as (agent, _):
            await publish_acked(agent, 3)
            await asyncio.sleep(0.2)  # some pings go out meanwhile: the stop comes amid them
            stopping = asyncio.ensure_future(asyncio.to_thread(server.stop, 60))
            with contextlib.suppress(ConnectionClosed):
                for index in range(200):  # until the server stops reading it
                    await agent.send({"type": "event", "id": 100 + index, "event": token("x")})
                    await asyncio.sleep(0.001)
            for peer, reading in zip(peers, readers, strict=True):
                frames, code = await reading
                assert code == 1012 and frames[-1] == RESTARTING
                assert event_seqs(frames)[:3] == [1, 2, 3]
                await peer.rest_until_fin()
                peer.writer.close()
                opcodes = peer.opcodes()
                assert opcodes[-1] == Opcode.CLOSE and opcodes.count(Opcode.CLOSE) == 1
            assert await stopping == 0
    records = server.log_records()
    assert_no_tracebacks(records)
    assert not [r for r in records if r["level"] in ("warning", "error")], records


async def test_an_embedded_stop_counts_each_close_and_ends_every_handler(tmp_path: Path) -> None:
    # Closes written at once (plain, msgpack) and by the writer (deflate) alike: each
    # counted as a 1012 the server sent, each handler done, no connection left.
    async with run_server(
        tmp_path, shutdown_grace=60.0, close_timeout=60.0, compression=True
    ) as server:
        port = server.port
        peers = [(await MutePeer.attach(port, "s1", create=True))[0]]
        peers += [(await MutePeer.attach(port, "s1", msgpack=True))[0]]
        peers += [(await MutePeer.attach(port, "s1", compress=True))[0] for _ in range(2)]
        readers = [asyncio.ensure_future(peer.until_close()) for peer in peers]
        await asyncio.wait_for(server.stop(), 30)
        for peer, reading in zip(peers, readers, strict=True):
            frames, code = await reading
            assert code == 1012 and frames[-1] == RESTARTING
            assert await peer.ended()
            peer.writer.close()
        metrics = server.services.metrics
        assert metrics.closes.labels(code="1012")._value.get() == 4  # type: ignore[attr-defined]
        assert metrics.connections._value.get() == 0  # type: ignore[attr-defined]
        assert not server._open_connections


async def test_a_stop_closes_at_once_behind_bytes_still_buffered_for_a_slow_peer(
    tmp_path: Path,
) -> None:
    # The slow peer's kernel queue is full and some bytes wait in the transport's
    # buffer, below its high-water mark: the close goes at once, behind them. Nothing
    # is torn or lost: the peer, reading again, gets every event, closed, 1012, FIN.
    async with run_server(tmp_path, shutdown_grace=60.0, close_timeout=60.0) as server:
        slow, _ = await MutePeer.attach(server.port, "s1", receive_buffer=4096, create=True)
        (connection,) = server._open_connections
        transport = connection.transport
        async with attach(server, "s1", role="agent") as (agent, _):
            published = 0
            while transport.get_write_buffer_size() == 0 and published < 2000:
                published += 1
                await agent.request({"type": "event", "event": token("x" * 8000)}, "ack")
            assert transport.get_write_buffer_size() > 0 and not connection.paused
            stopping = asyncio.ensure_future(server.stop())
            frames, code = await slow.until_close()
            assert code == 1012 and frames[-1] == RESTARTING
            assert event_seqs(frames) == list(range(1, published + 1))
            assert await slow.ended()
            slow.writer.close()
            await asyncio.wait_for(stopping, 30)


async def test_an_ordinary_close_gives_the_backlog_closed_1000_and_ends_its_handshake(
    tmp_path: Path,
) -> None:
    # Not a stop: the frames ahead of the close go from the flusher, the close from the
    # writer; the peer sees what it saw before, and its close reply is read.
    async with run_server(tmp_path, shutdown_grace=60.0, close_timeout=60.0) as server:
        viewer, _ = await MutePeer.attach(server.port, "s1", create=True)
        (connection,) = server._open_connections
        async with attach(server, "s1", role="agent") as (agent, _):
            for index in range(3):
                await agent.request({"type": "event", "id": index, "event": token("e")}, "ack")
            await agent.request({"type": "state", "id": "c", "state": "closed"}, "ack")
            frames, code = await viewer.until_close()
            assert code == 1000 and frames[-1] == {"type": "closed", "reason": "session closed"}
            assert event_seqs(frames) == [1, 2, 3]
            viewer.flush()  # the client's close reply, queued by its protocol
            assert await viewer.ended()
            viewer.writer.close()
            # The reply was read: the closing handshake done (1006 had it been dropped).
            await eventually(lambda: connection.close_code is not None)
            assert connection.close_code == 1000
