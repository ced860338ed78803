"""Keepalive: how the client finds a connection that went silent, with no FIN and no
RST (a phone in a tunnel, a NAT or a proxy that forgot the flow): no byte comes, and
none of ours arrives, so no read or write ever fails on its own.

Every ``interval`` seconds the client sends a Ping; when ``timeout`` seconds pass with
neither its Pong nor any other byte received (:class:`HeardConnection` notes when the
last came), nor any byte of ours taken by the peer (:mod:`.sent_bytes`), the link is
taken for dead and the socket is dropped at once (a closing handshake could not cross
it). The reader then sees the connection closed with no close frame received, which
:func:`.close_outcome` resumes from like any network failure. A silent link is so
found within ``interval + timeout`` seconds of going silent, plus a quarter of the
timeout (how often a late Pong's wait looks at what we sent), plus the Pong's latency
at most.

Our own bytes count, as the peer's do, while the Ping waits behind them: a publish of
1 MiB over a 30 KB/s uplink takes 35 s to cross, the Ping after it, and the server
sends nothing until it has read it. Dropping that link resent the frame on the next,
for ever. Only those ahead of the Ping, and the Ping, count (:class:`HeardConnection`
notes where it ends): a peer whose kernel acknowledges while its process hangs (or a
proxy that stopped forwarding) takes a receive buffer's worth of what a busy client
writes after it, megabytes, and says nothing by it of the Pong.

Any byte counts, as the JavaScript client counts any frame: a server reading slowly
(its byte rate limit) reads the Ping only after our publishes ahead of it, seconds of
them, but their acks come meanwhile; dropping such a link would send them all again.
A server that sends events and never answers Pings is kept so too: what we send may
not reach it, but then its own keepalive misses our Pongs and closes the connection.

Not websockets' own keepalive: it starts a Ping's timer only once the Ping is written
out, and writing waits for the socket's buffer to drain, which a dead link never does:
a client that fills its buffer on one (publishes, or a batch, sent into the tunnel)
would wait on it for as long as the kernel keeps retrying, a quarter of an hour. Here
the timer runs from the moment the Ping is due, through its write.

Pongs are read with the rest of the socket: while the application leaves the events
feed full, the link stops reading (:mod:`.feed`), and once websockets holds 16 frames
unread it stops reading the socket too, Pongs included. A stall that lasts past the
timeout ends the connection here, as the server's own keepalive (1011) or its full
queue (4429) would: safely, the client resumes from the last event queued once the
application has read the feed down, and loses nothing (tests/test_client_partition.py
test_d).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from ..errors import CloseCode
from .sent_bytes import SentBytes

log = logging.getLogger("bamboo_session.client")

# The server's defaults too (--ping-interval, --ping-timeout): both ends find a silent
# link within 40 s, and the Ping every 20 s keeps NATs and proxies (often idle for 60 s
# at least) from forgetting a quiet session.
PING_INTERVAL: Final = 20.0
PING_TIMEOUT: Final = 20.0
SILENT_REASON: Final = "keepalive ping timeout"
# How often, in a timeout, a late Pong's wait looks whether the peer took our bytes:
# a link that dies while bytes of ours are on their way is found that much later.
LOOKS_PER_TIMEOUT: Final = 4


class HeardConnection(ClientConnection):
    """websockets' client connection, noting when it last received bytes, and how many
    it has written."""

    last_received = 0.0  # the loop's time
    written = 0  # bytes handed to the transport, in all
    # ``written`` once the last Ping was handed to the transport (its last byte's place
    # in what we sent); None until then.
    ping_end: int | None = None

    def __init__(self, protocol: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        # Every write of websockets' connection takes what its protocol has to send:
        # counted there, the bytes written are known without writing them ourselves.
        data_to_send, send_ping = protocol.data_to_send, protocol.send_ping
        ping_queued = False

        def queue_ping(data: bytes) -> None:
            nonlocal ping_queued
            send_ping(data)
            ping_queued = True  # ping() hands it over next, in the same step

        def counted() -> list[bytes]:
            nonlocal ping_queued
            data: list[bytes] = data_to_send()
            self.written += sum(map(len, data))
            if ping_queued:
                ping_queued = False
                self.ping_end = self.written
            return data

        protocol.data_to_send, protocol.send_ping = counted, queue_ping

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        super().data_received(data)


@dataclass(frozen=True)
class Keepalive:
    """Seconds between Pings (``None``: no Pings) and for each Pong or any other byte
    (``None``: no limit, the Pings only keep the path's NATs awake)."""

    interval: float | None = PING_INTERVAL
    timeout: float | None = PING_TIMEOUT

    def __post_init__(self) -> None:
        for name, value in (("ping_interval", self.interval), ("ping_timeout", self.timeout)):
            if value is None:
                continue
            # A bool is an int: True would be a Ping a second, not an error.
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number of seconds or None, not {value!r}")
            if not value > 0:  # NaN too
                raise ValueError(f"{name} must be a positive number of seconds or None")

    def start(self, ws: ClientConnection) -> asyncio.Task[None] | None:
        """Watch ``ws`` until it closes, in a task the caller cancels; none without
        Pings."""
        if self.interval is None:
            return None
        assert isinstance(ws, HeardConnection)
        return asyncio.get_running_loop().create_task(self._watch(ws, self.interval))

    async def _watch(self, ws: HeardConnection, interval: float) -> None:
        sent = SentBytes(ws)
        try:
            while True:
                await asyncio.sleep(interval)
                if not await self._heard_from(ws, sent):
                    break
        except ConnectionClosed:
            return  # the reader sees why
        log.info("nothing came within %s s of a ping: the connection is silent", self.timeout)
        # Recorded as the close we sent (the reader's ConnectionClosed says it), but not
        # waited for: nothing crosses the link, and the transport goes at once.
        ws.protocol.fail(CloseCode.INTERNAL_ERROR, SILENT_REASON)
        ws.transport.abort()

    async def _heard_from(self, ws: HeardConnection, sent: SentBytes) -> bool:
        """Ping ``ws`` now: whether its Pong comes before ``timeout`` seconds pass with
        nothing received at all and nothing of ours taken by the peer (the Ping's write,
        behind a full buffer, included)."""
        loop = asyncio.get_running_loop()
        ws.ping_end = None  # until this Ping is handed over
        answered = loop.create_task(pinged(ws))
        try:
            quiet_since = loop.time()
            timeout = look_every = self.timeout
            if timeout is not None:
                # A quarter of the timeout itself: a fallback's allowance of minutes must
                # not make the looks, and the bound past it, that much coarser.
                look_every = timeout / LOOKS_PER_TIMEOUT
                timeout += sent.allowance()
            sent.moved(None)  # what was taken before the Ping is no news
            while True:
                left = None
                if timeout is not None and look_every is not None:
                    left = min(quiet_since + timeout - loop.time(), look_every)
                if (await asyncio.wait([answered], timeout=left))[0]:
                    await answered  # a ConnectionClosed, if that is how it ended
                    return True
                assert timeout is not None  # the wait only times out with one
                now = loop.time()
                # Only bytes ahead of the Ping, or the Ping itself: once the peer took it,
                # what follows it moving says nothing of the Pong (a hung peer's kernel
                # takes a receive buffer's worth, megabytes, while its process sleeps).
                if sent.moved(ws.ping_end):
                    quiet_since = now  # taken since the previous look, a quarter ago
                quiet_since = max(quiet_since, ws.last_received)
                if now - quiet_since >= timeout:
                    return False
        finally:
            answered.cancel()


async def pinged(ws: ClientConnection) -> None:
    """Send a Ping and wait for its Pong."""
    pong = await ws.ping()  # may wait for a full buffer to drain
    await pong
