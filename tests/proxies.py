"""TCP proxies between the tests' clients and a real server, for the faults a network
or a front proxy brings: connections cut, and plain HTTP requests refused; and before
a redis-server, connections Redis closed that the client has not seen close yet,
replies lost after their command ran, or held back until the test lets them through
(a slow Redis), chosen commands each delayed, connections reset, new connections
refused, and bytes no Redis would send pushed to a pub/sub connection, or garbled in
what it sends one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


class HttpProxy:
    """A TCP proxy on loopback to the server's ``port`` (a page, or a client, reaches the
    server through it, WebSocket and HTTP alike). ``cut()`` ends every connection
    through it, and closes new ones at once until ``mend()``; once ``refusing``, a plain
    HTTP request (no WebSocket upgrade) gets 503 (``refusal`` its reason phrase). With
    ``events_page``, a read of events of 1,000 (``limit=1000``: the console's, not the
    client's ``limit=1`` check) gets that JSON page instead of the server's answer;
    ``events_reads`` counts them. With ``before_events_read``, the first such read
    waits for it before it goes on (to the server, or to ``events_page``): what happens
    meanwhile comes between the console's read of the session's metadata and its read
    of the events. ``freeze()`` is a silent
    partition (a phone in a tunnel): the connections through the proxy stop carrying
    bytes either way, with no FIN and no RST, while new ones go through (the client
    found another network); ``thaw()`` heals it, and what was held goes on, in order.
    ``hold()`` keeps new connections waiting, accepted and unanswered, until
    ``release()`` (a client's reconnection held off until something happened, in one
    attempt).
    With ``uplink_rate``, what clients send reaches the server at that many bytes a
    second at most (a slow uplink: a large frame takes seconds to cross while the
    server sends nothing); the proxy's side of each connection then offers a small
    receive window, so that the client's bytes wait in the client, not in loopback's
    megabytes of kernel buffer. ``downlink_rate`` is its twin for what the server sends
    (a slow reader's link: a replay takes minutes to cross), the proxy's socket to the
    server offering that small window, so that the backlog waits in the server's kernel
    send queue, as it does before a real slow link."""

    UPLINK_RECEIVE_BUFFER = 16384

    def __init__(
        self, port: int, *, uplink_rate: int | None = None, downlink_rate: int | None = None
    ) -> None:
        self.port = port
        self.uplink_rate = uplink_rate
        self.downlink_rate = downlink_rate
        self.down = False
        self.refusing = False
        self.refusal = "Service Unavailable"
        self.events_page: dict[str, Any] | None = None
        self.events_reads = 0
        self.before_events_read: Callable[[], Awaitable[None]] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: set[asyncio.Event] = set()  # one per connection: set while it flows
        self._admitting = asyncio.Event()  # set unless new connections are held
        self._admitting.set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.uplink_rate is not None:
            # Set before listen: accepted sockets inherit it, and the window they
            # offer is scaled from it at the handshake.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.UPLINK_RECEIVE_BUFFER)
        listener.bind(("127.0.0.1", 0))
        # A throttled reader buffers little more than the window, for the same reason.
        limit = 65536 if self.uplink_rate is None else self.UPLINK_RECEIVE_BUFFER
        self._server = await asyncio.start_server(self._serve, sock=listener, limit=limit)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.transport.abort()
        self.thaw()  # nothing is left to hold

    def mend(self) -> None:
        self.down = False

    def hold(self) -> None:
        self._admitting.clear()

    def release(self) -> None:
        self._admitting.set()

    def freeze(self) -> int:
        """Stop every connection through the proxy, silently; how many there were."""
        for flowing in self._flowing:
            flowing.clear()
        return len(self._flowing)

    def thaw(self) -> None:
        for flowing in self._flowing:
            flowing.set()

    def garble_pushes(self, old: bytes = b"", new: bytes = b"") -> None:
        assert len(old) == len(new), "a replacement of another length breaks RESP's framing"
        self._garble = (old, new) if old else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            await self._admitting.wait()
            head = await reader.readuntil(b"\r\n\r\n")
            if self.refusing and b"upgrade: websocket" not in head.lower():
                writer.write(f"HTTP/1.1 503 {self.refusal}\r\nContent-Length: 0\r\n\r\n".encode())
                return
            console_read = re.match(rb"GET /[^ ]*/events\?[^ ]*limit=1000", head)
            if console_read and self.before_events_read is not None:
                hook, self.before_events_read = self.before_events_read, None
                await hook()
            if self.events_page is not None and console_read:
                self.events_reads += 1
                body = json.dumps(self.events_page).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close"
                    + f"\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                return
            up_reader, up_writer = await self._open_upstream()
            self._writers |= {writer, up_writer}
            up_writer.write(head)
            flowing = asyncio.Event()
            flowing.set()
            self._flowing.add(flowing)
            try:
                await asyncio.gather(
                    self._pump(reader, up_writer, flowing, self.uplink_rate),
                    self._pump(up_reader, writer, flowing, self.downlink_rate),
                )
            finally:
                self._flowing.discard(flowing)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.downlink_rate is None:
            return await asyncio.open_connection("127.0.0.1", self.port)
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Before connect: the window offered at the handshake is scaled from it.
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.UPLINK_RECEIVE_BUFFER)
        upstream.setblocking(False)
        await asyncio.get_running_loop().sock_connect(upstream, ("127.0.0.1", self.port))
        return await asyncio.open_connection(sock=upstream, limit=self.UPLINK_RECEIVE_BUFFER)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flowing: asyncio.Event,
        rate: int | None = None,
    ) -> None:
        # A tenth of a second's worth at a time, each chunk then waited out: the
        # sender sees its bytes leave at the rate, not in bursts a second apart.
        chunk = 65536 if rate is None else max(1, rate // 10)
        loop = asyncio.get_running_loop()
        due = loop.time()
        try:
            while data := await reader.read(chunk):
                # Frozen, a pump holds the chunk it read and reads no more: the sender's
                # socket buffers fill, and nothing tells either end the link is gone.
                await flowing.wait()
                writer.write(data)
                await writer.drain()
                if rate is not None:
                    due = max(due, loop.time()) + len(data) / rate
                    await asyncio.sleep(due - loop.time())
        except OSError:
            pass
        finally:
            # A frozen link's end does not reach the other side either: in a partition
            # neither the FIN nor the RST gets through.
            await flowing.wait()
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@dataclass(eq=False)
class _Link:
    """One client's connection through a RedisProxy, and its way to Redis."""

    client: asyncio.StreamWriter
    redis: asyncio.StreamWriter
    dropped: bool = False  # Redis's side closed; the client's left open
    subscriber: bool = False  # the client sent a (S)SUBSCRIBE on it
    losing: bool = False  # the reply to the command sent last is to be lost
    held: asyncio.Event | None = None  # replies wait until it is set
    withholding: bool = False  # nothing more the client sends is passed on
    pumps: list[asyncio.Task[None]] = field(default_factory=list)


class RedisProxy:
    """A TCP proxy on loopback to a redis-server's ``port``. ``drop()`` closes every
    connection through it on Redis's side and leaves the client's side open, as a
    connection whose close (a restart of Redis, a network fault) has not reached the
    client yet: the client's next command on it is not passed on, and the connection
    is reset instead. ``lose_reply_to(marker)``: the next command that holds
    ``marker`` reaches Redis, runs, and its reply is lost, the connection reset.
    ``hold_reply_to(marker)``: the next command that holds ``marker`` reaches Redis
    and runs, and its reply (with whatever else Redis sends on its connection) waits
    until ``release_replies()``; ``replies_held`` counts the commands so met.
    ``withhold(*markers)``: from then on, a command that holds one of them never reaches
    Redis, nor does anything its client sends after it on that connection (the call
    waits for its reply until the client gives up); ``withheld`` counts them.
    ``delay(marker, seconds)``: from then on, a command that holds ``marker`` waits that
    long before it goes on to Redis, and whatever its client sends after it on that
    connection with it (a call that lasts a known time, however fast the machine);
    ``delayed`` counts them.
    ``reset()`` resets every connection through it, on both sides.
    While ``refusing``, a new connection is closed at once (Redis unreachable to new
    connections, the open ones working on); while ``hanging``, a new connection is
    held open and never answered (a Redis that accepts and does not reply), until the
    client closes it, the proxy closes, or ``reset_held()`` resets it.
    ``push_to_subscribers(data)`` sends ``data`` to the client of each connection that
    subscribed, as if Redis had; ``reset_subscribers()`` resets those connections alone,
    on both sides (a fault on a pub/sub connection); ``subscribers`` counts the
    connections that subscribed.
    ``garble_pushes(old, new)``: ``old`` is replaced by ``new``, of its length (the
    RESP framing stays whole), in what Redis sends a subscribed connection, until
    :meth:`garble_pushes` is called with nothing; ``garbled`` counts the replacements."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lost = 0  # replies lost so far
        self.refusing = False
        self.hanging = False
        self.subscribers = 0
        self.garbled = 0
        self._garble: tuple[bytes, bytes] | None = None
        self._marker: bytes | None = None
        self._hold_marker: bytes | None = None
        self._withhold_markers: tuple[bytes, ...] = ()
        self.withheld = 0
        self._delay: tuple[bytes, float] | None = None
        self.delayed = 0
        self._release = asyncio.Event()
        self.replies_held = 0
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()  # connections hanging
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def drop(self) -> None:
        for link in self._links:
            link.dropped = True
            link.redis.transport.abort()

    def lose_reply_to(self, marker: bytes) -> None:
        self._marker = marker

    def hold_reply_to(self, marker: bytes) -> None:
        self._hold_marker = marker

    def withhold(self, *markers: bytes) -> None:
        """From then on, a command that holds any of ``markers`` is withheld."""
        self._withhold_markers = markers

    def delay(self, marker: bytes, seconds: float) -> None:
        self._delay = (marker, seconds)

    def release_replies(self) -> None:
        """Every reply held goes on to its client; those held later wait again."""
        self._release.set()
        self._release = asyncio.Event()

    def reset(self) -> None:
        for link in self._links:
            link.client.transport.abort()
            link.redis.transport.abort()

    def reset_subscribers(self) -> int:
        """Resets each subscribed connection; how many there were."""
        subscribers = [link for link in self._links if link.subscriber]
        for link in subscribers:
            link.client.transport.abort()
            link.redis.transport.abort()
        return len(subscribers)

    def reset_held(self) -> int:
        """Resets each connection held while ``hanging`` (a try that hung fails at
        once); how many there were."""
        held = list(self._held)
        for writer in held:
            writer.transport.abort()
        return len(held)

    def push_to_subscribers(self, data: bytes) -> int:
        """Sends ``data`` to each subscribed client; how many there were."""
        subscribers = [link for link in self._links if link.subscriber and not link.dropped]
        for link in subscribers:
            link.client.write(data)
        return len(subscribers)

    def garble_pushes(self, old: bytes = b"", new: bytes = b"") -> None:
        assert len(old) == len(new), "a replacement of another length breaks RESP's framing"
        self._garble = (old, new) if old else None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        if self.hanging:
            await self._hang(reader, writer)
            return
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(writer, redis_writer)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._to_redis(link, reader)),
            asyncio.create_task(self._to_client(link, redis_reader)),
        ]
        try:
            await asyncio.gather(*link.pumps, return_exceptions=True)
        finally:
            self._links.discard(link)

    async def _hang(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._held.add(writer)
        try:
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass  # read, never answered
        finally:
            self._held.discard(writer)
            writer.transport.abort()

    async def _to_redis(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if link.dropped:
                    break
                if link.withholding or any(marker in data for marker in self._withhold_markers):
                    self.withheld += not link.withholding
                    link.withholding = True
                    continue
                if self._delay is not None and self._delay[0] in data:
                    self.delayed += 1
                    await asyncio.sleep(self._delay[1])
                if self._marker is not None and self._marker in data:
                    self._marker, link.losing = None, True
                if self._hold_marker is not None and self._hold_marker in data:
                    self._hold_marker, link.held = None, self._release
                    self.replies_held += 1
                if not link.subscriber and b"SUBSCRIBE" in data:
                    link.subscriber = True
                    self.subscribers += 1
                self._sending(link, data)
                link.redis.write(data)
                await link.redis.drain()
        link.client.transport.abort()
        link.redis.transport.abort()

    async def _to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if link.losing:
                    self.lost += 1
                    break
                if link.held is not None:
                    await link.held.wait()
                    link.held = None
                if link.subscriber and self._garble is not None and self._garble[0] in data:
                    self.garbled += data.count(self._garble[0])
                    data = data.replace(*self._garble)
                link.client.write(self._replying(link, data))
                await link.client.drain()
        if not link.dropped:
            link.client.transport.abort()
            link.redis.transport.abort()

    def _sending(self, link: _Link, data: bytes) -> None:
        """A subclass's look at what a client sends on ``link``, as it goes to Redis."""

    def _replying(self, link: _Link, data: bytes) -> bytes:
        """What goes to the client of ``link`` of ``data``, which Redis sent: a subclass's."""
        return data

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._held):
            writer.transport.abort()
        for link in list(self._links):
            for pump in link.pumps:
                pump.cancel()
            link.client.transport.abort()
            link.redis.transport.abort()
