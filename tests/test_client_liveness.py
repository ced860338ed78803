"""The Python client's keepalive against servers that answer Pings badly or late, and
close() racing the end of a connection. Through tests/pong_proxy.py, a real server's
Pongs are dropped (though its events flow), garbled, or flooded; a server reading
slowly (its byte rate limit) answers a Ping only after the client's publishes ahead of
it, while their acks keep coming; through tests/proxies.py, a connection is cut just
as the application calls close(). Real servers and clients on loopback; every wait is
bounded."""

from __future__ import annotations

import asyncio

import pytest

from bamboo_session.protocol.client import BambooClient
from tests.proxies import HttpProxy
from tests.support import run_server

PING_INTERVAL = 0.3  # the clients'
PING_TIMEOUT = 0.7
CLIENT = {
    "ping_interval": PING_INTERVAL,
    "ping_timeout": PING_TIMEOUT,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
}
# The server's keepalive out of the way: these tests are about the client's.
PATIENT_SERVER = {"ping_interval": 30.0, "ping_timeout": 30.0}


@pytest.mark.parametrize("turns", [0, 1])
async def test_close_as_the_connection_drops_stops_the_client_at_once(turns: int) -> None:
    """close() called in the turns of the loop in which the client winds its dropped
    connection down (its sender and keepalive stopping), the server out of reach."""
    async with run_server() as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            client = await BambooClient.connect(
                f"ws://127.0.0.1:{port}", create=True, role="agent", **CLIENT
            )
            ws = client._link._ws  # when this connection ends is the subject here
            assert ws is not None
            proxy.cut()  # and new connections are closed at once, until mend()
            async with asyncio.timeout(5):
                await ws.wait_closed()
            for _ in range(turns):
                await asyncio.sleep(0)
            closing = asyncio.create_task(client.close())
            done, _ = await asyncio.wait([closing], timeout=2.0)
            assert done, "close() waits on a reconnect loop that outlives it"
            proxy.mend()
            await asyncio.sleep(0.5)  # a client still running would reconnect now
            assert (client.reconnects, client.connected, client.finished) == (0, False, True)
        finally:
            await proxy.close()
