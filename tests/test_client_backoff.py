"""The reconnect backoff across connections that did useful work (protocol/client/reconnect.py,
``recovered``), against a real server through a proxy that cuts connections: one that
brought an event new to the client, or an ack of its publish, starts the backoff again
from its first wait (and ``max_retries`` from 0), however short it was; one welcomed and
then dropped with nothing new still counts as a failed attempt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, ConnectionLost
from tests.client_backlog_support import take
from tests.support import run_server
from tests.test_client_partition import seconds_until
from tests.test_client_resume import TIMEOUT, TcpProxy

CUTS = 8
# The first wait's ceiling: one of [1/2, 1] times this after a connection that recovered.
FIRST_WAIT = 0.25
# A loaded two-core machine's connect, upgrade, hello and welcome, beside that wait. Each
# later wait would be uniform in [0, FIRST_WAIT * 2**attempt] if the attempts counted on:
# under this bound all of CUTS (8) times with a chance of 1 in 300.
SLACK = 2.5


async def reconnected(client: BambooClient, reconnects: int, bound: float) -> None:
    """Waits until ``client`` has made ``reconnects`` reconnects; fails past ``bound``."""
    await seconds_until(lambda: client.reconnects >= reconnects or client.finished, bound)
    assert (client.finished, client.reconnects) == (False, reconnects)


async def follow_through_cuts(client: BambooClient, agent: BambooClient, proxy: TcpProxy) -> None:
    """``CUTS`` times: an event published, ``client`` given it, its connection cut, and
    the reconnect waited for (within ``FIRST_WAIT`` + ``SLACK``)."""
    for i in range(CUTS):
        await agent.publish(Token(f"e{i}"))
        (event,) = await take(client, 1, TIMEOUT)
        assert event.seq == i + 1
        proxy.cut()
        await reconnected(client, i + 1, FIRST_WAIT + SLACK)


@pytest.mark.parametrize("role", ["follower", "publisher"])
async def test_connections_cut_after_each_event_or_ack_are_no_failed_attempts(role: str) -> None:
    """Every reconnect succeeds: with ``max_retries=2`` the client must not give up at
    the third cut, as it did while each connection younger than 10 s counted as a
    failed attempt."""
    options: dict[str, Any] = {"max_retries": 2, "backoff_initial": FIRST_WAIT, "backoff_max": 5}
    async with run_server() as server, TcpProxy(server.port) as proxy:
        direct = f"ws://127.0.0.1:{server.port}"
        agent = await BambooClient.connect(direct, "cut", create=True, receive_events=False)
        try:
            if role == "follower":
                async with await BambooClient.connect(
                    proxy.url, "cut", last_seq=0, **options
                ) as follower:
                    await follow_through_cuts(follower, agent, proxy)
                    assert (follower.finished, follower.reconnects) == (False, CUTS)
            else:
                async with await BambooClient.connect(
                    proxy.url, "cut", role="agent", receive_events=False, **options
                ) as publisher:
                    for i in range(CUTS):
                        assert await publisher.publish(Token(f"p{i}")) == i + 1
                        proxy.cut()
                        await reconnected(publisher, i + 1, TIMEOUT)
                    assert (publisher.finished, publisher.reconnects) == (False, CUTS)
        finally:
            await agent.close()


async def test_a_follower_cut_after_each_event_resumes_after_the_first_wait_each_time() -> None:
    """A cut connection that had brought an event is resumed after the first wait, not
    one that doubles with each cut (up to ``backoff_max``): a slow follower whose own
    keepalive drops it every few seconds is not kept away from events it could take."""
    options = {"backoff_initial": FIRST_WAIT, "backoff_max": 60.0}
    async with run_server() as server, TcpProxy(server.port) as proxy:
        direct = f"ws://127.0.0.1:{server.port}"
        async with (
            await BambooClient.connect(direct, "slow", create=True, receive_events=False) as agent,
            await BambooClient.connect(proxy.url, "slow", last_seq=0, **options) as follower,
        ):
            await follow_through_cuts(follower, agent, proxy)


async def test_connections_dropped_after_their_welcome_with_nothing_new_still_back_off() -> None:
    """A welcome alone is no recovery: a follower that has caught up, and whose every
    connection is dropped once welcomed (a server that fails right after each hello),
    still counts those as failed attempts, and gives up after ``max_retries``."""
    async with run_server() as server, TcpProxy(server.port) as proxy:
        direct = f"ws://127.0.0.1:{server.port}"
        async with (
            await BambooClient.connect(direct, "drops", create=True, receive_events=False) as agent,
            await BambooClient.connect(
                proxy.url, "drops", last_seq=0, max_retries=3, backoff_initial=0.05,
                backoff_max=0.4,
            ) as follower,
        ):  # fmt: skip
            for i in range(3):
                await agent.publish(Token(f"e{i}"))
            await take(follower, 3, TIMEOUT)  # its first connection did useful work

            def welcomed_since_the_cut() -> bool:
                # A cut clears the proxy's streams: one there again is a new connection,
                # and the client is connected only on it. (Polling for "not connected"
                # after a cut missed a reconnect quicker than the poll, CI 2026-12-06.)
                return bool(proxy.transports) and follower.connected

            async def drop_each_welcomed_connection() -> None:
                while True:
                    await seconds_until(
                        lambda: welcomed_since_the_cut() or follower.finished, TIMEOUT
                    )
                    if follower.finished:
                        return
                    proxy.cut()

            await asyncio.wait_for(drop_each_welcomed_connection(), 3 * TIMEOUT)
            with pytest.raises(ConnectionLost, match="gave up after 3 attempts"):
                await follower.ping()
            assert proxy.cuts == 1 + 3  # its first connection, then three welcomed attempts
