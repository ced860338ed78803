"""A TCP proxy between the tests' clients and a real server, for the faults a network
or a front proxy brings: connections cut, and plain HTTP requests refused."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any


class HttpProxy:
    """A TCP proxy on loopback to the server's ``port`` (a page, or a client, reaches the
    server through it, WebSocket and HTTP alike). ``cut()`` ends every connection
    through it, and closes new ones at once until ``mend()``; once ``refusing``, a plain
    HTTP request (no WebSocket upgrade) gets 503. With ``events_page``, a read of events
    of 1,000 (``limit=1000``: the console's, not the client's ``limit=1`` check) gets
    that JSON page instead of the server's answer; ``events_reads`` counts them. With
    ``before_events_read``, the first such read waits for it before it goes on (to the
    server, or to ``events_page``): what happens meanwhile comes between the console's
    read of the session's metadata and its read of the events."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.down = False
        self.refusing = False
        self.events_page: dict[str, Any] | None = None
        self.events_reads = 0
        self.before_events_read: Callable[[], Awaitable[None]] | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.transport.abort()

    def mend(self) -> None:
        self.down = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if self.refusing and b"upgrade: websocket" not in head.lower():
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
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
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
            self._writers |= {writer, up_writer}
            up_writer.write(head)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
