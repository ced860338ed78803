"""The idle connection's memory cut (the keepalive's Ping in its own coroutine, the
frame parser taking the request parser's place, the queue's hooks and the hello's
admission as bound methods and partials) seen from a peer, against a real ``serve``
process: the keepalive still closes a silent peer with 1011 after one Ping, ignores
Pongs that answer nothing pending, and leaves nothing behind when connections close
mid-Ping or a stop ends two thousand of them; the upgrade reads what was pipelined
behind the request, however the request was split, and refuses as before; hellos of
two creators at once at the creation rate are counted each to its own (a server in
this process for two of them, to look at its tasks and its store); and a flood behind
a hello its handler is stuck on (a frozen redis-server) is left unread past
``--max-queue`` frames or ``--max-queue-bytes``, counted from the kernel's queues.
Each passes on the code before the cut (42f9b15) as after it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests.redis_server import INSTALL_HINT, RedisServer, available, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.store_stalls_support import frozen
from tests.support import attach, open_peer, run_server
from tests.test_incoming_queue import traced

PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1
PING_TIMEOUT = 1.0
IDLE_PEERS = 2000  # at a stop, each waiting for the Pong of a Ping it never answers
WAIT = 60.0  # only a guard against a hang: each wait is for a frame or the end


def masked(opcode: int, payload: bytes) -> bytes:
    """A final frame as a client writes it."""
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def upgrade_request(port: int, *extra_headers: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /api/v1/stream/s1 HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Protocol: bamboo.v1",
        *extra_headers,
    ]
    if not any(h.startswith("Sec-WebSocket-Version") for h in extra_headers):
        lines.append("Sec-WebSocket-Version: 13")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


HELLO = masked(TEXT, json.dumps({"type": "hello", "create": True, "user_id": "u"}).encode())


class RawPeer:
    """A WebSocket client that answers nothing on its own."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def head(self) -> tuple[int, bytes]:
        """The answer's status and head."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        return int(head.split(b" ", 2)[1]), head

    async def frame(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readexactly(2), WAIT)
        size = head[1] & 0x7F
        if size == 126:
            size = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await self.reader.readexactly(size)

    async def data_or_close(self) -> tuple[int, bytes]:
        """The next frame that is not a Ping (Pings left unanswered)."""
        while True:
            opcode, payload = await self.frame()
            if opcode != PING:
                return opcode, payload

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def upgraded(self, port: int) -> None:
        await self.send(upgrade_request(port))
        status, head = await self.head()
        assert status == 101, head

    async def ended(self) -> bytes:
        """What the server sent until it ended the stream."""
        return await asyncio.wait_for(self.reader.read(), WAIT)

    def abort(self) -> None:
        self.writer.transport.abort()


def started(tmp_path: Path, name: str, *flags: str) -> ServerProcess:
    return ServerProcess(tmp_path / f"data-{name}", tmp_path / f"{name}.log", *flags)


KEEPALIVE = (
    "--ping-interval", "0.3", "--ping-timeout", str(PING_TIMEOUT),
    "--close-timeout", "1", "--hello-timeout", "120",
)  # fmt: skip


async def test_pongs_late_twice_or_for_an_older_ping_and_none_at_all(tmp_path: Path) -> None:
    server = started(tmp_path, "keepalive", *KEEPALIVE)
    await server.start_in_loop()
    try:
        peer = await RawPeer.connect(server.port)
        await peer.upgraded(server.port)
        pings: list[bytes] = []
        for _ in range(3):
            opcode, payload = await peer.frame()
            assert opcode == PING
            pings.append(payload)
            # Late (half the timeout), twice, after a Pong that answers no Ping.
            await asyncio.sleep(PING_TIMEOUT / 2)
            await peer.send(masked(PONG, b"none") + masked(PONG, payload) * 2)
        # Now the Ping before the last one's payload: it answers nothing pending, and
        # no other Pong comes. One Ping, then the keepalive's close.
        opcode, payload = await peer.frame()
        assert opcode == PING
        await peer.send(masked(PONG, pings[-1]))
        opcode, payload = await peer.frame()
        assert opcode == CLOSE, (opcode, payload)
        assert struct.unpack("!H", payload[:2])[0] == 1011
        assert payload[2:] == b"keepalive ping timeout"
        await peer.send(masked(PONG, payload) + masked(CLOSE, payload[:2]))  # late
        assert await peer.ended() == b""

        # Closed by the peer while a Ping waits for its Pong: once with a reset, once
        # with a close frame, once with its end of stream.
        for ending in ("reset", "close", "eof"):
            peer = await RawPeer.connect(server.port)
            await peer.upgraded(server.port)
            assert (await peer.frame())[0] == PING
            if ending == "reset":
                peer.abort()
                continue
            if ending == "close":
                await peer.send(masked(CLOSE, struct.pack("!H", 1000)))
            else:
                peer.writer.write_eof()
            await peer.ended()
            peer.abort()
        assert server.stop() == 0
        records = server.log_records()
        assert_no_tracebacks(records)
        assert not any("destroyed" in json.dumps(record) for record in records)
    finally:
        server.kill()


async def test_a_stop_ends_thousands_of_connections_each_waiting_for_a_pong(
    tmp_path: Path,
) -> None:
    flags = ("--ping-interval", "0.2", "--ping-timeout", "600", "--hello-timeout", "600")
    server = started(tmp_path, "stop", *flags, "--close-timeout", "30")
    await server.start_in_loop()
    peers: list[RawPeer] = []
    try:
        for first in range(0, IDLE_PEERS, 100):
            batch = [RawPeer.connect(server.port) for _ in range(first, first + 100)]
            peers += await asyncio.gather(*batch)
            await asyncio.gather(*(p.upgraded(server.port) for p in peers[first:]))
        # Every one has had its Ping, and answers none: each keepalive is in _ping_once.
        for peer in peers:
            assert (await peer.frame())[0] == PING

        async def close_reply(peer: RawPeer) -> int:
            opcode, payload = await peer.data_or_close()
            assert opcode == CLOSE
            # What follows the close frame (the server's FIN, or a reset once it has
            # exited with the reply unread) is not this test's subject.
            with contextlib.suppress(ConnectionError):
                await peer.send(masked(CLOSE, payload[:2]))
                await peer.ended()
            return int(struct.unpack("!H", payload[:2])[0])

        replies = [asyncio.ensure_future(close_reply(peer)) for peer in peers]
        assert await asyncio.to_thread(server.stop, WAIT) == 0
        assert set(await asyncio.gather(*replies)) == {1012}  # a stop: service restart
        records = server.log_records()
        assert_no_tracebacks(records)
        assert not any("destroyed" in json.dumps(record) for record in records)
    finally:
        server.kill()
        for peer in peers:
            peer.abort()


async def welcome_after(peer: RawPeer) -> dict[str, object]:
    opcode, payload = await peer.data_or_close()
    assert opcode == TEXT, (opcode, payload)
    message: dict[str, object] = json.loads(payload)
    return message


def frames_in(data: bytes) -> list[tuple[int, object]]:
    """Each unmasked frame in ``data``: its opcode and its JSON's ``type``; every byte
    must belong to a whole frame."""
    frames: list[tuple[int, object]] = []
    while data:
        size, start = data[1] & 0x7F, 2
        if size == 126:
            size, start = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, start = struct.unpack("!Q", data[2:10])[0], 10
        payload = data[start : start + size]
        assert len(payload) == size, "a frame cut short"
        frames.append((data[0] & 0x0F, json.loads(payload).get("type")))
        data = data[start + size :]
    return frames


async def test_the_upgrade_reads_what_follows_the_request_and_refuses_as_before(
    tmp_path: Path,
) -> None:
    server = started(tmp_path, "upgrade")
    await server.start_in_loop()
    port = server.port
    try:
        # The hello pipelined in the same write as the request.
        peer = await RawPeer.connect(port)
        await peer.send(upgrade_request(port) + HELLO)
        assert (await peer.head())[0] == 101
        assert (await welcome_after(peer))["type"] == "welcome"
        peer.abort()

        # The hello pipelined, then the peer's end of stream: upgraded, then closed
        # without a close frame (1006 for the peer, as before the cut). The hello is
        # unanswered when the end of stream is read with it, welcomed when the server
        # reads it first (the peer's two writes can be read apart): never more.
        peer = await RawPeer.connect(port)
        await peer.send(upgrade_request(port) + HELLO)
        peer.writer.write_eof()
        assert (await peer.head())[0] == 101
        rest = await peer.ended()
        assert rest == b"" or frames_in(rest) == [(TEXT, "welcome")], rest
        peer.abort()

        # The request a byte at a time, the hello's first byte in the request's last
        # segment, the rest of the frame a byte at a time after the answer.
        peer = await RawPeer.connect(port)
        data = upgrade_request(port) + HELLO[:1]
        for i in range(len(data)):
            await peer.send(data[i : i + 1])
        assert (await peer.head())[0] == 101
        for i in range(1, len(HELLO)):
            await peer.send(HELLO[i : i + 1])
        assert (await welcome_after(peer))["type"] == "welcome"
        peer.abort()

        # A body (405), a version refused (400): JSON, and what follows is never read
        # as frames.
        for extra, status in (
            (("Content-Length: 5",), 405),
            (("Sec-WebSocket-Version: 8",), 400),
        ):
            peer = await RawPeer.connect(port)
            body = b"hello" if status == 405 else b""
            await peer.send(upgrade_request(port, *extra) + body + HELLO)
            got, head = await peer.head()
            assert got == status, head
            if status == 405:
                assert b"\r\nAllow: " in head
            else:
                assert b"\r\nSec-WebSocket-Version: 13\r\n" in head
            await peer.send(HELLO * 3)
            rest = await peer.ended()
            assert json.loads(rest)["error"]["code"]
            peer.abort()
        assert server.stop() == 0
        assert_no_tracebacks(server.log_records())
    finally:
        server.kill()


async def test_concurrent_hellos_of_two_creators_at_the_rate_limit_count_apart() -> None:
    # Each hello's admission is a partial bound to its own creator: twelve hellos of
    # each of two addresses, all at once, get the burst (5) of welcomes each, the rest
    # 4429; the per-user cap (4 for "capped") applies across both, inside that count.
    limits = {"session_create_rate": 0.001, "session_create_burst": 5}
    async with run_server(max_sessions_per_user=4, **limits) as server:

        async def hello(address: str, user: str) -> int | None:
            async with open_peer(server, local_addr=(address, 0)) as peer:
                await peer.send({"type": "hello", "user_id": user})
                try:
                    frame = await peer.recv(WAIT)
                except ConnectionClosed:
                    return peer.ws.close_code
                assert frame["type"] == "welcome", frame
                return 0

        hellos = [
            hello(address, "capped" if i % 2 else f"free-{address}-{i}")
            for i in range(12)
            for address in ("127.0.0.1", "127.0.0.2")
        ]
        results = await asyncio.gather(*hellos)
        for codes in (results[0::2], results[1::2]):  # by address
            assert set(codes) <= {0, 4403, 4429}, codes
            # A creator's burst is taken by its welcomes and its hellos refused for the
            # cap (the rate is checked first): 5 of 12 pass the rate, 7 get 4429.
            assert codes.count(4429) == 7, codes
        assert results.count(0) + results.count(4403) == 10
        listed = await server.manager.list_sessions()
        capped = [s for s in listed.sessions if s.user_id == "capped"]
        assert listed.total == results.count(0)
        assert len(capped) == 4 if 4403 in results else len(capped) <= 4
        # Attaching creates nothing: no rate token asked, from either address.
        existing = listed.sessions[0].id
        for address in ("127.0.0.1", "127.0.0.2"):
            async with attach(server, existing, local_addr=(address, 0)):
                pass


def keepalive_tasks() -> list[asyncio.Task[object]]:
    """The tasks of this loop running a connection's keepalive, or its Ping's wait."""
    names = ("keepalive", "_ping_once", "ping")
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith(names)]  # type: ignore[union-attr]


async def test_a_connection_closed_while_its_ping_waits_leaves_no_task() -> None:
    async with run_server(ping_interval=0.1, ping_timeout=600.0, hello_timeout=600.0) as server:
        for ending in ("reset", "close", "eof"):
            peer = await RawPeer.connect(server.port)
            await peer.upgraded(server.port)
            assert (await peer.frame())[0] == PING  # its keepalive now waits in _ping_once
            assert keepalive_tasks()
            if ending == "reset":
                peer.abort()
            elif ending == "close":
                # Its close, then its end of stream. (A close frame alone, before any
                # hello, holds the connection until the hello timeout, as it did
                # before this cut: the handler waits for the hello, not the socket.)
                await peer.send(masked(CLOSE, struct.pack("!H", 1000)))
                peer.writer.write_eof()
            else:
                peer.writer.write_eof()
            _, pending = await asyncio.wait(keepalive_tasks(), timeout=WAIT)
            assert not pending, ending
            assert keepalive_tasks() == [], ending
            peer.abort()


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int]:
    """The kernel's send and receive queues of the loopback socket between the ports."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].split(":")[1], fields[2].split(":")[1]
        if int(local, 16) == local_port and int(remote, 16) == remote_port:
            tx, rx = fields[4].split(":")
            return int(tx, 16), int(rx, 16)
    raise AssertionError(f"no socket {local_port} -> {remote_port}")


FLOOD_FRAME = 256 * 1024
FLOOD = 192  # 48 MiB of frames behind a hello the handler is stuck on


async def test_a_flood_behind_a_stuck_hello_is_paused_at_the_queue_bounds(
    tmp_path: Path,
) -> None:
    # The handler waits on a frozen redis-server for the hello's session, so nobody
    # takes a frame: reading pauses once --max-queue frames (4) wait, or once they hold
    # --max-queue-bytes (600 KiB: three frames of 256 KiB), and the rest of the flood
    # stays in the peer's buffers and the kernel's, not in the server.
    if not available():
        pytest.skip(INSTALL_HINT)
    redis = RedisServer(tmp_path / "redis")
    await redis.start_in_loop()
    try:
        # websockets pauses past --max-queue: with 5 frames queued.
        for max_queue_bytes, held_frames in ((str(64 << 20), 5), (str(600 * 1024), 3)):
            name = f"flood-{max_queue_bytes}"
            server = started(
                tmp_path, name, "--store", redis.url(prefix=prefix_for(tmp_path / name)),
                "--store-read-timeout", "120", "--max-queue", "4",
                "--max-queue-bytes", max_queue_bytes, "--rate-limit", "0",
                "--rate-limit-bytes", "0",
            )  # fmt: skip
            await server.start_in_loop()
            try:
                with frozen(redis):
                    peer = await RawPeer.connect(server.port)
                    await peer.upgraded(server.port)
                    client_port = peer.writer.get_extra_info("sockname")[1]
                    pad = b'{"type":"zzz","pad":"' + b"a" * (FLOOD_FRAME - 23) + b'"}'
                    frame = masked(TEXT, pad)
                    peer.writer.write(HELLO + frame * FLOOD)
                    sent = len(HELLO) + len(frame) * FLOOD
                    transport = peer.writer.transport
                    read_by_server = sent
                    for _ in range(600):  # until the server reads no more (60 s at most)
                        client_tx, _ = tcp_queues(client_port, server.port)
                        _, server_rx = tcp_queues(server.port, client_port)
                        waiting = transport.get_write_buffer_size() + client_tx + server_rx
                        if sent - waiting == read_by_server and server_rx > 0:
                            break
                        read_by_server = sent - waiting
                        await asyncio.sleep(0.1)
                    # What the server took off the socket: the hello, the frames queued,
                    # and at most a slice (4 KiB) and a frame in the making beside them.
                    assert read_by_server <= len(HELLO) + (held_frames + 1) * len(frame) + 8192, (
                        read_by_server / len(frame)
                    )
                peer.abort()
                assert server.stop() == 0
                assert_no_tracebacks(server.log_records(), allowed=("connection closed",))
            finally:
                server.kill()
    finally:
        redis.stop()


async def test_with_no_ping_timeout_unanswered_pings_hold_no_growing_memory() -> None:
    # --ping-timeout none keeps the Pings, with no limit for the Pong. A peer that never
    # answers one had each Ping's payload, future and timestamp kept by websockets
    # (pending_pings) for the connection's life: some 300 bytes a Ping, 1.3 MB a day
    # at the 20 s interval, per connection. A Pong acknowledges every Ping before its
    # own, so only the latest needs keeping.
    async with run_server(ping_interval=0.001, ping_timeout=None, hello_timeout=600.0) as server:
        peer = await RawPeer.connect(server.port)
        await peer.upgraded(server.port)
        with traced():
            for _ in range(100):
                assert (await peer.frame())[0] == PING
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(2000):
                assert (await peer.frame())[0] == PING
            grown = tracemalloc.get_traced_memory()[0] - before
        assert grown < 100_000, grown  # 2,000 Pings kept were some 590 KB
        peer.abort()
