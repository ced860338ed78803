"""A user at ``--max-connections-per-user`` who closes a connection and opens another
as soon as the close reply comes is welcomed on the same instance, on a JSONL store
(the count of this process) as on Redis (the shared count, released in the background:
server/user_connections.py): the connection stops counting as its close frame goes out,
and an acquire refused while the user's releases are (or were, as it asked) under way
waits for them and asks again. Real server, real redis-server; the bouncing peer is a
raw socket that keeps its end open after the close reply (as a client that reconnects
on seeing the close may), so the server's handler for it ends only after the new hello.
A stopping instance's close, written without websockets' send_data, lets the count go
too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from websockets.frames import Close, Frame, Opcode

from bamboo_session.server.app import BambooServer
from bamboo_session.server.user_connections import SharedUserConnections
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.replay_support import publish, stalled_resumer
from tests.support import attach, run_server

UPGRADE = (
    "GET /api/v1/stream/{session} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bamboo.v1\r\n\r\n"
)
ROUNDS = 100  # reconnects per test: each one a close reply seen, then a hello
CAP = 3
TIMEOUT = 10  # seconds any one read of a raw peer may take before the test fails


class RawPeer:
    """A WebSocket client on a bare socket: it decides when its end closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def hello(cls, port: int, session: str, **hello: Any) -> tuple[RawPeer, int | None]:
        """A peer that sent a hello on ``session``, and the close code it got instead of
        a welcome (None: welcomed)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        writer.write(UPGRADE.format(session=session).encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 101"), head
        peer.send(Opcode.TEXT, json.dumps({"type": "hello", **hello}).encode())
        opcode, payload = await peer.frame()
        if opcode == Opcode.CLOSE:
            return peer, Close.parse(payload).code
        assert opcode == Opcode.TEXT and json.loads(payload)["type"] == "welcome", payload
        return peer, None

    def send(self, opcode: Opcode, payload: bytes) -> None:
        self.writer.write(Frame(opcode, payload).serialize(mask=True))

    async def frame(self) -> tuple[int, bytes]:
        """The server's next frame (unmasked, unfragmented): opcode and payload."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), TIMEOUT)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)

    async def close_answered(self) -> None:
        """Sends a close and reads until the server's close frame; the socket stays open."""
        self.send(Opcode.CLOSE, Close(1000, "").serialize())
        while (await self.frame())[0] != Opcode.CLOSE:
            pass

    def drop(self) -> None:
        self.writer.transport.abort()


async def bounce(server: BambooServer, session: str, rounds: int) -> list[int]:
    """Closes the user's third connection and opens another at once, ``rounds`` times;
    the close codes of the hellos refused (after each, once the old socket is dropped,
    the peer waits for room before it goes on)."""
    port = server.port
    refused: list[int] = []
    peer, code = await RawPeer.hello(port, session, user_id="u")
    assert code is None
    try:
        for _ in range(rounds):
            await peer.close_answered()
            old, (peer, code) = peer, await RawPeer.hello(port, session, user_id="u")
            old.drop()
            if code is not None:
                refused.append(code)
                peer.drop()
                peer = await _welcomed_again(port, session)
    finally:
        peer.drop()
    return refused


async def _welcomed_again(port: int, session: str) -> RawPeer:
    welcomed: list[RawPeer] = []

    async def attempt() -> bool:
        peer, code = await RawPeer.hello(port, session, user_id="u")
        if code is None:
            welcomed.append(peer)
        else:
            peer.drop()
        return code is None

    await eventually(attempt, timeout=10)
    return welcomed[0]


@contextlib.asynccontextmanager
async def at_the_cap(server: BambooServer, session: str) -> AsyncIterator[None]:
    """The user ``u`` holds all but one of its places on ``server``."""
    async with contextlib.AsyncExitStack() as held:
        for i in range(CAP - 1):
            await held.enter_async_context(attach(server, session, create=i == 0, user_id="u"))
        yield


async def test_a_reconnect_on_seeing_the_close_is_welcomed_on_jsonl(tmp_path: Path) -> None:
    async with run_server(tmp_path / "data", max_connections_per_user=CAP) as server:
        async with at_the_cap(server, "j"):
            assert await bounce(server, "j", ROUNDS) == []
            assert server.user_connections.count("u") == CAP


async def test_a_reconnect_on_seeing_the_close_is_welcomed_on_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    async with run_server(store=url, max_connections_per_user=CAP) as server:
        assert isinstance(server.user_connections, SharedUserConnections)
        async with at_the_cap(server, "r"):
            assert await bounce(server, "r", ROUNDS) == []


async def test_a_reconnect_waits_for_the_release_redis_holds(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis frozen under a heartbeat's refresh as the close goes out: the release waits
    for that refresh (else the refresh could register the connection again), so the new
    hello's acquire reaches Redis first and is refused; it waits for the release and
    asks again."""
    redis = start_redis("held")
    assert redis.pid is not None
    url = redis.url(prefix=prefix_for(tmp_path), heartbeat=30)
    limits = {"max_connections_per_user": CAP, "store_read_timeout": 10}
    async with run_server(store=url, **limits) as server:
        shared = server.user_connections
        assert isinstance(shared, SharedUserConnections)
        async with at_the_cap(server, "h"):
            peer, code = await RawPeer.hello(server.port, "h", user_id="u")
            assert code is None
            for _ in range(10):
                os.kill(redis.pid, signal.SIGSTOP)
                try:
                    refreshing = asyncio.ensure_future(shared.refresh())
                    await asyncio.sleep(0)  # the refresh under way: the release waits
                    await peer.close_answered()
                    assert shared.releasing >= 1  # queued before the close reply went out
                    hello = asyncio.ensure_future(RawPeer.hello(server.port, "h", user_id="u"))
                    await asyncio.sleep(0.1)  # the hello's acquire on its way to Redis
                finally:
                    os.kill(redis.pid, signal.SIGCONT)
                old, (peer, code) = peer, await hello
                await refreshing
                old.drop()
                assert code is None
            peer.drop()


class ReleaseBeforeRefusal:
    """A TCP proxy to Redis that, once ``armed``, reorders one release and one acquire:
    the release's call waits to be sent on until an acquire's answer (a refusal: the
    released connection still counts) came back from Redis, and that answer waits to
    be handed on until ``release_ended`` is set. The refusal is read after the release
    ended, which a loaded machine did by chance (the page reads' wake-ups late)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.armed = False
        self.acquire_answered = asyncio.Event()
        self.release_ended = asyncio.Event()
        self._streams: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        self._server.close()
        self.acquire_answered.set()  # nothing is held past the test, failed or not
        self.release_ended.set()
        for stream in self._streams:
            stream.transport.abort()

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        redis, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._streams += [to_client, to_redis]
        held_answer = asyncio.Event()  # this stream's next answer is the acquire's

        async def calls() -> None:
            while data := await client.read(65536):
                if self.armed and b"\r\nrelease\r\n" in data:
                    await self.acquire_answered.wait()
                elif self.armed and b"\r\nacquire\r\n" in data:
                    self.armed = False
                    held_answer.set()
                to_redis.write(data)
            to_redis.close()

        async def answers() -> None:
            while data := await redis.read(65536):
                if held_answer.is_set():
                    held_answer.clear()
                    self.acquire_answered.set()
                    await self.release_ended.wait()
                to_client.write(data)
            to_client.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(calls(), answers())


async def test_a_refusal_read_after_the_release_ended_is_asked_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The release was under way as the acquire asked, and ended before its refusal was
    read: the refusal is that release's doing all the same, and the hello is welcomed."""
    proxy = ReleaseBeforeRefusal(redis_server.port)
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    url = url.replace(f":{redis_server.port}/", f":{await proxy.start()}/")
    try:
        async with run_server(store=url, max_connections_per_user=CAP) as server:
            shared = server.user_connections
            assert isinstance(shared, SharedUserConnections)
            async with at_the_cap(server, "o"):
                peer, code = await RawPeer.hello(server.port, "o", user_id="u")
                assert code is None
                proxy.armed = True
                await peer.close_answered()
                hello = asyncio.ensure_future(RawPeer.hello(server.port, "o", user_id="u"))
                await proxy.acquire_answered.wait()  # refused: the release is held
                await eventually(lambda: shared.releasing == 0, timeout=TIMEOUT)
                proxy.release_ended.set()
                again, code = await hello
                peer.drop()
                again.drop()
                assert code is None
    finally:
        await proxy.close()


async def test_a_stopping_instance_lets_its_users_count_go_with_the_close(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A stop writes each attached peer's close at once (flush.py close_at_once), then
    waits until every peer holds its bytes: here a viewer that takes nothing holds it
    open (grace and close timeout a minute). The user who saw the stop's close and
    reconnects to the other instance finds its place free: the count went with the close
    frame, not when the stop is done with every peer (before: refused 4429 until then)."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    limits = {"max_connections_per_user": 1, "shutdown_grace": 60.0, "close_timeout": 60.0}
    async with run_server(store=url, **limits) as other:
        async with run_server(store=url, ping_interval=None, **limits) as stopping_one:
            async with attach(stopping_one, "s", create=True, role="agent") as (agent, _):
                peer, code = await RawPeer.hello(stopping_one.port, "s", user_id="u")
                assert code is None
                stuck = await asyncio.to_thread(stalled_resumer, stopping_one.port, "s", 0)
                await agent.recv_type("presence")  # the stuck viewer joined
                await publish(agent, 20, size=1000)
                stopping = asyncio.ensure_future(stopping_one.stop())
                try:
                    while (await peer.frame())[0] != Opcode.CLOSE:
                        pass
                    assert not stopping.done()  # the stuck viewer holds the stop

                    async def welcomed_on_the_other() -> bool:
                        again, code = await RawPeer.hello(other.port, "t", user_id="u", create=True)
                        again.drop()
                        return code is None

                    await eventually(welcomed_on_the_other, timeout=TIMEOUT)
                finally:
                    stuck.close()
                    peer.drop()
                    await stopping
