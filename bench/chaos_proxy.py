"""The chaos soak's network (bench/chaos_soak.py): a TCP proxy on loopback between its
clients and the servers, which cuts connections at the soak's command, in either
direction, at once or after a few more bytes, so most often in the middle of a frame.
(tests/proxies.py is the tests' proxy, which cuts every connection at once.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable

CHUNK = 65536
# A cut waits for this many more bytes in its direction at most: frames of the soak
# are about 100 bytes, so a cut lands inside one most of the time.
MOST_BYTES_BEFORE_CUT = 300
# A cut that waits for bytes happens after this long anyway (nothing may come).
CUT_DEADLINE = 0.5


@dataclasses.dataclass(eq=False)
class Link:
    """One client's connection through the proxy, and its way to a server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    # Bytes still let through, per direction ("up": to the server), before the cut.
    cut_after: dict[str, int] = dataclasses.field(default_factory=dict)

    def abort(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


class CuttingProxy:
    """Listens on a loopback port; each connection goes on to the port ``upstream()``
    gives then (an instance up), or is refused (closed) when it raises OSError."""

    def __init__(self, upstream: Callable[[], int], rng: random.Random) -> None:
        self.upstream = upstream
        self.rng = rng
        self.links: set[Link] = set()
        self.port = 0
        self.cuts = 0
        self.cuts_mid_stream = 0  # after some more bytes in one direction
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self, session_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/stream/{session_id}"

    def cut(self, most: int) -> int:
        """Cuts up to ``most`` connections drawn at random, each at once or once a
        random count of bytes more went one way; how many it cut."""
        victims = self.rng.sample(list(self.links), min(most, len(self.links)))
        loop = asyncio.get_running_loop()
        for link in victims:
            self.links.discard(link)
            self.cuts += 1
            if self.rng.random() < 0.25:
                link.abort()
                continue
            self.cuts_mid_stream += 1
            direction = self.rng.choice(("up", "down"))
            link.cut_after[direction] = self.rng.randint(1, MOST_BYTES_BEFORE_CUT)
            loop.call_later(CUT_DEADLINE, link.abort)
        return len(victims)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            port = self.upstream()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, up_writer)
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer, "up"),
                self._pump(link, up_reader, writer, "down"),
            )
        finally:
            self.links.discard(link)
            link.abort()

    @staticmethod
    async def _pump(
        link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                left = link.cut_after.get(direction)
                if left is not None and left <= len(data):
                    # Into an empty buffer a write goes out at once: the peer gets the
                    # part of a frame before the reset.
                    writer.write(data[:left])
                    await writer.drain()
                    link.abort()
                    return
                if left is not None:
                    link.cut_after[direction] = left - len(data)
                writer.write(data)
                await writer.drain()
            # One side ended: the other learns it by its end of stream.
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
        except OSError:
            link.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.abort()
        self.links.clear()
