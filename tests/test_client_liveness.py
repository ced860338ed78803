"""The Python client's keepalive against servers that answer Pings badly or late, and
close() racing the end of a connection. Through tests/pong_proxy.py, a real server's
Pongs are dropped (though its events flow), garbled, or flooded; a server reading
slowly (its byte rate limit) answers a Ping only after the client's publishes ahead of
it, while their acks keep coming; through tests/proxies.py, a connection is cut just
as the application calls close(). Real servers and clients on loopback; every wait is
bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, StoredEvent
from tests.client_backlog_support import take, url
from tests.pong_proxy import PongPolicy, pong_proxied
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


async def within(condition: Callable[[], bool], bound: float) -> float:
    """Seconds until ``condition()`` holds; fails past ``bound``."""
    started = time.monotonic()
    for _ in range(int(bound / 0.02) + 1):
        if condition():
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {bound:.1f} s")


async def publish_paced(client: BambooClient, count: int, pause: float) -> None:
    for i in range(count):
        await client.publish(Token(f"e{i}"))
        await asyncio.sleep(pause)


async def read_into(client: BambooClient, seqs: list[int]) -> None:
    async for item in client.events():
        assert isinstance(item, StoredEvent), item
        seqs.append(item.seq)


async def test_a_link_that_carries_events_but_no_pongs_is_kept_until_it_goes_quiet() -> None:
    """A server that never answers Pings, but whose events keep coming, is heard from:
    its link is alive (the server's own keepalive finds one that carries nothing of
    ours). Once nothing comes for the timeout after a Ping was due, it is dropped and
    resumed, every event delivered once."""
    async with (
        run_server(**PATIENT_SERVER) as server,
        pong_proxied(server.port, "drop") as (proxy, proxy_url),
        await BambooClient.connect(url(server), create=True, role="agent") as agent,
        await BambooClient.connect(proxy_url, agent.session_id, last_seq=0, **CLIENT) as viewer,
    ):
        seqs: list[int] = []
        reading = asyncio.create_task(read_into(viewer, seqs))
        try:
            # An event every 0.1 s for 3 s: ten Pings go unanswered meanwhile.
            await publish_paced(agent, 30, 0.1)
            assert proxy.pongs_seen >= 1
            assert viewer.reconnects == 0
            found = await within(lambda: viewer.reconnects > 0, PING_INTERVAL + PING_TIMEOUT + 1.5)
            # Not before the quiet had lasted that long (it began a pause before).
            assert found >= PING_TIMEOUT - 0.1
            await agent.publish(Token("after"))
            await within(lambda: len(seqs) == 31, 5)
            assert seqs == list(range(1, 32))
        finally:
            reading.cancel()


@pytest.mark.parametrize(("pongs", "flood", "dropped"), [("garble", 0, True), ("flood", 50, False)])
async def test_pongs_of_pings_never_sent_are_no_answer(
    pongs: PongPolicy, flood: int, dropped: bool
) -> None:
    """An idle link whose Pongs answer no Ping of ours (garbled) is dropped as silent
    and resumed; one flooded with unsolicited Pongs besides the right ones is kept."""
    async with (
        run_server(**PATIENT_SERVER) as server,
        pong_proxied(server.port, pongs, flood) as (proxy, proxy_url),
        await BambooClient.connect(url(server), create=True, role="agent") as agent,
        await BambooClient.connect(proxy_url, agent.session_id, last_seq=0, **CLIENT) as viewer,
    ):
        await agent.publish(Token("before"))
        assert [e.seq for e in await take(viewer, 1, 5)] == [1]
        if dropped:  # three rounds of silence at least; slower on a loaded machine
            await within(lambda: viewer.reconnects >= 3, 10 * (PING_INTERVAL + PING_TIMEOUT))
        else:
            await asyncio.sleep(4 * (PING_INTERVAL + PING_TIMEOUT))
            assert viewer.reconnects == 0
        assert proxy.pongs_seen >= 3
        await agent.publish(Token("after"))
        assert [e.seq for e in await take(viewer, 1, 5)] == [2]


async def test_a_server_reading_slowly_answers_late_but_its_acks_keep_the_link() -> None:
    """The server's byte rate holds its reading back: the client's Ping is read after
    the publishes ahead of it (seconds of them), but their acks come meanwhile. The
    link is alive: it is kept, and nothing is sent twice."""
    slow = {**PATIENT_SERVER, "rate_limit_bytes": 256 * 1024, "rate_limit_bytes_burst": 256 * 1024}
    async with (
        run_server(**slow) as server,
        await BambooClient.connect(url(server), create=True, role="agent", **CLIENT) as publisher,
    ):
        started = time.monotonic()
        contents = [f"{i:04d} " + "x" * 4000 for i in range(400)]  # 1.6 MB: 6 s of reading
        seqs = await asyncio.wait_for(
            asyncio.gather(*(publisher.publish(Token(c)) for c in contents)), 30
        )
        assert time.monotonic() - started > 3 * (PING_INTERVAL + PING_TIMEOUT)
        assert sorted(seqs) == list(range(1, 401))
        assert (publisher.reconnects, publisher.resent) == (0, 0)


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        ("ping_interval", 0, ValueError),
        ("ping_interval", -1.0, ValueError),
        ("ping_timeout", float("nan"), ValueError),
        ("ping_timeout", 0.0, ValueError),
        ("ping_interval", True, TypeError),
        ("ping_timeout", "20", TypeError),
    ],
)
async def test_keepalive_settings_that_are_no_positive_number_are_refused_before_connecting(
    setting: str, value: object, error: type[Exception]
) -> None:
    # Nothing listens on the discard port: a check made after connecting would fail so.
    with pytest.raises(error, match=setting):
        await BambooClient.connect("ws://127.0.0.1:9", create=True, **{setting: value})  # type: ignore[arg-type]


async def test_keepalive_settings_past_any_timer_wait_as_set() -> None:
    async with (
        run_server() as server,
        await BambooClient.connect(
            url(server), create=True, ping_interval=1e300, ping_timeout=float("inf")
        ) as client,
    ):
        assert await client.publish(Token("kept")) == 1
        await asyncio.sleep(0.2)
        assert (client.connected, client.reconnects) == (True, 0)
