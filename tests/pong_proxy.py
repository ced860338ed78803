"""A TCP proxy on loopback that plays a broken or hostile server's part in the
keepalive: it passes a real server's WebSocket connections through, but reads the
frames the server sends (unmasked, after the upgrade's response) and does to each Pong
what ``pongs`` says: ``"pass"`` it on, ``"drop"`` it (a server that never answers
Pings, though its events flow), ``"garble"`` its payload (it answers a Ping it was
never sent), or ``"flood"`` it (``flood`` unsolicited Pongs of random payloads go
before it, and after every data frame)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from typing import Literal

PONG = 0xA
PongPolicy = Literal["pass", "drop", "garble", "flood"]


def unmasked_frame(opcode: int, payload: bytes) -> bytes:
    """A final frame as a server writes it (no mask; payloads under 126 bytes)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, len(payload)]) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next unmasked frame's opcode, and the whole frame's bytes."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    extended = b""
    if length == 126:
        extended = await reader.readexactly(2)
        length = struct.unpack("!H", extended)[0]
    elif length == 127:
        extended = await reader.readexactly(8)
        length = struct.unpack("!Q", extended)[0]
    assert not head[1] & 0x80, "a server's frames are not masked"
    return head[0] & 0x0F, head + extended + await reader.readexactly(length)


class PongProxy:
    """Proxies to a server's ``port``; ``pongs_seen`` counts the Pongs the server sent."""

    def __init__(self, port: int, pongs: PongPolicy, flood: int = 0) -> None:
        self.port = port
        self.pongs = pongs
        self.flood = flood
        self.pongs_seen = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._to_server(reader, up_writer), self._to_client(up_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, up_writer):
                end.transport.abort()
                self._writers.discard(end)

    async def _to_server(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    async def _to_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readuntil(b"\r\n\r\n"))
        while True:
            opcode, frame = await read_frame(reader)
            writer.write(self._rewritten(opcode, frame))
            await writer.drain()

    def _rewritten(self, opcode: int, frame: bytes) -> bytes:
        flood = b"".join(unmasked_frame(PONG, os.urandom(4)) for _ in range(self.flood))
        if opcode != PONG:
            return frame + flood if self.pongs == "flood" else frame
        self.pongs_seen += 1
        if self.pongs == "drop":
            return b""
        if self.pongs == "garble":
            head, payload = frame[:2], frame[2:]
            return head + bytes(byte ^ 0xFF for byte in payload)
        return flood + frame if self.pongs == "flood" else frame


@contextlib.asynccontextmanager
async def pong_proxied(port: int, pongs: PongPolicy, flood: int = 0):  # type: ignore[no-untyped-def]
    proxy = PongProxy(port, pongs, flood)
    proxy_port = await proxy.start()
    try:
        yield proxy, f"ws://127.0.0.1:{proxy_port}"
    finally:
        await proxy.close()
