"""The Python client's keepalive on a slow uplink. Through
tests/proxies.py's HttpProxy at 40 KB/s, a publish of a few hundred KB takes seconds
to cross; the client's Ping waits behind it, and the server sends nothing until it has
read it. Our bytes being taken are the link's sign of life: the publish is acked once,
with no reconnect, and stored once. A link frozen while such a frame is on its way is
still found within the keepalive's bound, and the publish resent and stored once
(``connected`` across a keepalive drop: tests/test_client_partition.py test_d). Real
servers and clients on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient
from bamboo_session.protocol.client.sent_bytes import kernel_unsent
from bamboo_session.server.app import BambooServer
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.test_client_partition import seconds_until, stored

UPLINK_RATE = 40_000  # bytes a second, the client's to the server
PING_INTERVAL = 0.5  # the clients'
PING_TIMEOUT = 1.0
CLIENT = {
    "ping_interval": PING_INTERVAL,
    "ping_timeout": PING_TIMEOUT,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
}
# A silent link is found within this (keepalive.py): the interval, the timeout, and the
# quarter of it between two looks at what the peer took of ours.
FOUND_WITHIN = PING_INTERVAL + PING_TIMEOUT + PING_TIMEOUT / 4
# The server's keepalive out of the way: the client's is the subject here.
PATIENT_SERVER = {"ping_interval": 30.0, "ping_timeout": 30.0}
SLACK = 1.5  # a loaded two-core machine's scheduling, and the reconnect's backoff


@contextlib.asynccontextmanager
async def throttled(server: BambooServer) -> AsyncIterator[tuple[HttpProxy, str]]:
    proxy = HttpProxy(server.port, uplink_rate=UPLINK_RATE)
    port = await proxy.start()
    try:
        yield proxy, f"ws://127.0.0.1:{port}"
    finally:
        await proxy.close()


def random_text(chars: int) -> str:
    return secrets.token_urlsafe(chars)[:chars]  # random: nothing shortens its crossing


async def test_b_a_publish_crossing_a_slow_uplink_is_acked_once_with_no_reconnect() -> None:
    # The proxy takes some 65 KB of ours ahead of its throttle (its socket's buffer and
    # its reader's), 1.6 s at its rate that neither end sees move: a timeout must
    # outlast the path's own queue (20 s by default: 600 KB at 30 KB/s).
    patient = {**CLIENT, "ping_timeout": 3.0}
    content = random_text(400_000)  # 10 s at the uplink's rate
    async with (
        run_server(**PATIENT_SERVER) as server,
        throttled(server) as (_, proxy_url),
        await BambooClient.connect(proxy_url, create=True, role="agent", **patient) as publisher,
    ):
        started = time.monotonic()
        crossing = len(content) / UPLINK_RATE
        seq = await asyncio.wait_for(publisher.publish(Token(content)), crossing + 5)
        # It did cross slowly: the keepalive's whole bound passed twice meanwhile.
        assert time.monotonic() - started > 2 * (PING_INTERVAL + patient["ping_timeout"])
        assert seq == 1
        assert (publisher.reconnects, publisher.resent, publisher.connected) == (0, 0, True)
        assert await stored(server, publisher.session_id) == [(1, content)]


async def test_c_a_link_frozen_with_a_large_frame_unsent_is_found_in_time() -> None:
    content = random_text(200_000)  # 5 s at the uplink's rate
    async with (
        run_server(**PATIENT_SERVER) as server,
        throttled(server) as (proxy, proxy_url),
        await BambooClient.connect(proxy_url, create=True, role="agent", **CLIENT) as publisher,
    ):
        ws = publisher._link._ws  # its socket's send queue is the subject here
        assert ws is not None
        publishing = asyncio.create_task(publisher.publish(Token(content)))
        await asyncio.sleep(1.0)  # a fifth of it across; most of the rest in our kernel
        in_kernel = kernel_unsent(ws.transport.get_extra_info("socket"))
        assert in_kernel is not None and in_kernel > 50_000, in_kernel
        assert proxy.freeze() == 1
        # The client found another network, a fast one: the frame, resent on it, is not
        # held up in the proxy's queue past the 1 s timeout (see test_b).
        proxy.uplink_rate = None
        found = await seconds_until(lambda: publisher.reconnects == 1, FOUND_WITHIN + SLACK)
        # Not long before the timeout: the quiet began with the last bytes the proxy
        # took before the freeze, which it takes a window at a time, tenths apart.
        assert found >= PING_TIMEOUT / 2
        # Sent again on the new link (the client found another network).
        assert await asyncio.wait_for(publishing, 5) == 1
        assert (publisher.reconnects, publisher.resent) == (1, 1)
        assert await stored(server, publisher.session_id) == [(1, content)]
