"""The chaos soak's network (bench/chaos_soak.py): a TCP proxy on loopback between its
clients and the servers, which at the soak's command cuts connections (in either
direction, at once or after a few more bytes, so most often in the middle of a frame)
or freezes them: a silent partition, where no byte, FIN or RST gets through.

A frozen link either stays frozen (``held``) or thaws after ``THAW_AFTER`` seconds.
While frozen, neither end learns anything, not even that the other end closed or
aborted its side. A thawing link stops reading: per direction, the chunk in hand
waits, and its stream's buffer stops taking more past ``2 * CHUNK`` (the senders'
buffers keep the rest, as in a stalled network); at the thaw every byte, FIN and
reset goes on late, to an end that may have given the connection up or resumed
elsewhere meanwhile. A held link reads and drops whatever either end sends, holding
nothing, so that it sees each end give up (its FIN or reset): it is dropped once both
did, each end's time to give up recorded. (Reading, it lets TCP acknowledge what it
drops, so a sender's buffers do not fill as in a real partition: the thawing links
have that case.) tests/proxies.py is the tests' proxy, which cuts every connection
at once or freezes it until told to thaw."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import socket
import time
from collections.abc import Callable

CHUNK = 65536
# A cut waits for this many more bytes in its direction at most: frames of the soak
# are about 100 bytes, so a cut lands inside one most of the time.
MOST_BYTES_BEFORE_CUT = 300
# A cut that waits for bytes happens after this long anyway (nothing may come).
CUT_DEADLINE = 0.5
# Seconds a thawing link stays frozen, drawn uniformly: from before either end's
# keepalive notices to after both did (bench/chaos_soak.py's settings).
THAW_AFTER = (0.2, 3.0)
ENDS = ("client", "server")
# Linux's TCP states once the peer sent a FIN (CLOSE_WAIT) or a reset (CLOSE).
PEER_GONE = (8, 7)


def _flowing() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclasses.dataclass(eq=False)
class Link:
    """One client's connection through the proxy, and its way to a server."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    readers: tuple[asyncio.StreamReader, asyncio.StreamReader]  # from the client, the server
    client_port: int = 0  # the client's end of it: its socket's local port
    # Bytes still let through, per direction ("up": to the server), before the cut.
    cut_after: dict[str, int] = dataclasses.field(default_factory=dict)
    flowing: asyncio.Event = dataclasses.field(default_factory=_flowing)
    held: bool = False  # frozen for good
    frozen_at: float = 0.0
    # The ends still sending (each pump reads one), and those that gave up while held.
    sending: set[str] = dataclasses.field(default_factory=lambda: set(ENDS))
    gave_up: set[str] = dataclasses.field(default_factory=set)
    client_left: bool = False  # seen leaving before the thaw
    ended: bool = False

    def abort(self) -> None:
        self.client.transport.abort()
        self.server.transport.abort()


class CuttingProxy:
    """Listens on a loopback port; each connection goes on to the port ``upstream()``
    gives then (an instance up), or is refused (closed) when it raises OSError."""

    def __init__(self, upstream: Callable[[], int], rng: random.Random) -> None:
        self.upstream = upstream
        self.rng = rng
        self.links: set[Link] = set()  # those a cut or a freeze may pick
        self.frozen: set[Link] = set()
        self.port = 0
        self.cuts = 0
        self.cuts_mid_stream = 0  # after some more bytes in one direction
        self.freezes = 0
        self.freezes_held = 0  # of them, the links that never thawed
        self.thaws = 0
        # Thaws of a link an end had closed or reset meanwhile (FIN or reset received,
        # read by the proxy or not).
        self.thaws_after_an_end_left = 0
        # Thaws that then passed on to the server bytes the client sent before it left
        # (its publishes, most likely sent again on a new connection meanwhile).
        self.thaws_delivering_a_gone_client = 0
        self.held_dropped = 0  # held links dropped once both ends gave up
        # Held links still frozen at the end whose only end left holding them was a
        # client documented to hold a socket it gave up (see unfrozen).
        self.held_by_design = 0
        # Seconds from a held link's freeze to each end's giving it up.
        self.gave_up_after: dict[str, list[float]] = {end: [] for end in ENDS}
        self._server: asyncio.Server | None = None
        self._closing = False  # its own aborts are no end giving up
        self._none_frozen = asyncio.Event()
        self._none_frozen.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=CHUNK)
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

    def freeze(
        self, most: int, held: bool | None = None, thaw_after: tuple[float, float] = THAW_AFTER
    ) -> int:
        """Freezes up to ``most`` connections drawn at random, each held for good or
        thawed later (after ``thaw_after`` seconds, drawn uniformly), as ``held`` says
        (None: a coin toss each); how many it froze."""
        victims = self.rng.sample(list(self.links), min(most, len(self.links)))
        loop = asyncio.get_running_loop()
        for link in victims:
            self.links.discard(link)
            self.frozen.add(link)
            self._none_frozen.clear()
            self.freezes += 1
            link.flowing.clear()
            link.frozen_at = time.monotonic()
            link.held = self.rng.random() < 0.5 if held is None else held
            if link.held:
                self.freezes_held += 1
            else:
                loop.call_later(self.rng.uniform(*thaw_after), self._thaw, link)
        return len(victims)

    def _thaw(self, link: Link) -> None:
        self.thaws += 1
        left = [end for end in ENDS if self._seen_leaving(link, end)]
        self.thaws_after_an_end_left += bool(left)
        link.client_left = "client" in left
        self._unfreeze(link)
        link.flowing.set()
        if not link.ended:
            self.links.add(link)

    @staticmethod
    def _seen_leaving(link: Link, end: str) -> bool:
        """Whether ``end`` closed or reset its side, read by the proxy or still behind
        bytes it did not read: the kernel's state of the proxy's socket to it says."""
        sock = (link.client, link.server)[ENDS.index(end)].get_extra_info("socket")
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
        except (OSError, AttributeError):  # closed already, or no TCP_INFO (not Linux)
            state = None
        return end not in link.sending or state in PEER_GONE

    async def unfrozen(
        self, patience: float, held_by_design: Callable[[], set[int]] = set
    ) -> list[str]:
        """Waits up to ``patience`` seconds until no link is frozen (each thawed, or was
        dropped once both its ends gave it up) but those held by design (below); a line
        for each other still frozen then,
        naming the ends that did not give it up. ``held_by_design()`` gives the local
        ports of clients documented to keep a socket they gave up open while its path
        stays silent (the JavaScript client on Node's built-in WebSocket, which has no
        abort: docs/protocol.md, "JavaScript client"): a held link only such a client
        still holds is counted in ``held_by_design``, not named."""
        deadline = time.monotonic() + patience
        while True:
            by_design = held_by_design()
            left = [link for link in self.frozen if not self._held_by(link, by_design)]
            if not left or time.monotonic() >= deadline:
                break
            with contextlib.suppress(TimeoutError):  # polled: held_by_design may change
                await asyncio.wait_for(self._none_frozen.wait(), 0.5)
        self.held_by_design += len(self.frozen) - len(left)
        now = time.monotonic()
        problems = []
        for link in left:
            problems.append(
                f"a link frozen {now - link.frozen_at:.0f} s ago"
                + (" (held)" if link.held else " (to thaw)")
                + f": its {' and '.join(sorted(link.sending))} never gave it up"
                + f" (client port {link.client_port})"
            )
        return problems

    @staticmethod
    def _held_by(link: Link, ports: set[int]) -> bool:
        """Whether ``link`` is held and only its client, one of ``ports``, still holds it."""
        return link.held and link.sending == {"client"} and link.client_port in ports

    def _unfreeze(self, link: Link) -> None:
        self.frozen.discard(link)
        if not self.frozen:
            self._none_frozen.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            port = self.upstream()
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port, limit=CHUNK)
        except OSError:
            writer.transport.abort()
            return
        link = Link(writer, up_writer, (reader, up_reader), writer.get_extra_info("peername")[1])
        self.links.add(link)
        try:
            await asyncio.gather(
                self._pump(link, reader, up_writer, "up"),
                self._pump(link, up_reader, writer, "down"),
            )
        finally:
            link.ended = True
            self.links.discard(link)
            if link.held and link.gave_up == set(ENDS):
                self.held_dropped += 1
            self._unfreeze(link)
            link.abort()

    async def _pump(
        self,
        link: Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        """Carries one direction's bytes until its sending end stops, through cuts and
        freezes; an end's FIN or reset goes on to the other as the bytes would."""
        end = "client" if direction == "up" else "server"
        while True:
            try:
                data: bytes | None = await reader.read(CHUNK)
            except OSError:
                data = None  # a reset
            if not data:
                await self._end_left(link, end, writer, reset=data is None)
                return
            if not link.flowing.is_set():
                if link.held:
                    continue  # dropped: nothing gets through, ever
                await link.flowing.wait()  # the chunk in hand waits; nothing more is read
                if direction == "up" and link.client_left:
                    link.client_left = False  # counted once
                    self.thaws_delivering_a_gone_client += 1
            try:
                if self._forward(link, direction, data, writer):
                    await writer.drain()
            except OSError:  # the other end is gone
                if link.held and not link.flowing.is_set():
                    continue  # its reset was no news to this end: held, it keeps sending
                link.abort()
                return

    @staticmethod
    def _forward(link: Link, direction: str, data: bytes, writer: asyncio.StreamWriter) -> bool:
        """Writes ``data`` on, or the part of it a pending cut lets through and then
        cuts; whether the link is still up."""
        left = link.cut_after.get(direction)
        if left is not None and left <= len(data):
            # Into an empty buffer a write goes out at once: the peer gets the part of
            # a frame before the reset.
            writer.write(data[:left])
            link.abort()
            return False
        if left is not None:
            link.cut_after[direction] = left - len(data)
        writer.write(data)
        return True

    async def _end_left(
        self, link: Link, end: str, writer: asyncio.StreamWriter, *, reset: bool
    ) -> None:
        """``end`` closed (FIN) or aborted (reset) its side: the other end learns it as
        it would learn bytes: now, at the thaw, or never (a held link)."""
        link.sending.discard(end)
        if self._closing:
            return
        if not link.flowing.is_set() and link.held:
            link.gave_up.add(end)
            self.gave_up_after[end].append(time.monotonic() - link.frozen_at)
            return  # once both gave up, both pumps ended, and the link is dropped
        await link.flowing.wait()
        if reset:
            link.abort()
            return
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()

    async def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        for link in list(self.links | self.frozen):
            link.abort()
        self.links.clear()
        self.frozen.clear()
