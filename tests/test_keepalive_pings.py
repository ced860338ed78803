"""A ``ping`` with ``"keepalive": true`` (docs/protocol.md, ``ping``), seen by a peer: a
session pinged only so expires at its TTL with its peer attached (``closed`` and 4404);
such pings are held to the frame rate like any frame (``rate_limited``, then 4429); and
on a Redis store, one instance's keepalive pings do not keep the session from going
``idle`` on the other, nor record activity there. A session pinged only so, or only
with WebSocket Pings, goes idle and no look records activity; a ``keepalive`` other than
``true`` leaves a plain ping, which is activity."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from bamboo_session.protocol.client.tasks import stopped
from bamboo_session.protocol.models import SessionMetadata
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, get, run_server
from tests.test_server_instances import becomes

KEEPALIVE = {"type": "ping", "id": "liveness", "keepalive": True}


async def idle_while(
    server: Any, session_id: str, between: Callable[[], Awaitable[object]], what: str
) -> SessionMetadata:
    """The session's metadata once it is ``idle``, ``between()`` awaited between two
    reads of it (30 s at most, however loaded the machine; ``what`` held off idle)."""
    deadline = asyncio.get_running_loop().time() + 30.0
    while (idle := await server.manager.get_metadata(session_id)) is None or (idle.state != "idle"):
        assert asyncio.get_running_loop().time() < deadline, f"{what} held off idle"
        await between()
        await asyncio.sleep(0.05)
    return idle


async def keepalive_ping(peer: Peer) -> None:
    assert (await peer.request(KEEPALIVE, "pong"))["id"] == KEEPALIVE["id"]


async def no_activity_from(
    server: Any, session_id: str, pinged: Callable[[], Awaitable[object]], what: str
) -> None:
    """A session whose peer only ``pinged()`` every 50 ms goes idle, and three looks'
    worth more of them (idle_timeout 0.3 s) record no activity."""
    idle = await idle_while(server, session_id, pinged, f"{what} every 50 ms")
    until = asyncio.get_running_loop().time() + 1.0
    while asyncio.get_running_loop().time() < until:
        await pinged()
        await asyncio.sleep(0.05)
    seen = await server.manager.get_metadata(session_id)
    assert seen is not None and seen.state == "idle", seen
    assert (seen.last_activity_at, seen.expires_at) == (idle.last_activity_at, idle.expires_at)


async def test_keepalive_pings_are_answered_but_are_no_activity() -> None:
    async with run_server(idle_timeout=0.3) as server, attach(server) as (peer, welcome):
        pinged = partial(keepalive_ping, peer)
        await no_activity_from(server, welcome["session"]["id"], pinged, "keepalive pings")


async def keep_pinging(peer: Peer, every: float, most: int = 300) -> None:
    """Keepalive pings every ``every`` seconds until the connection closes, ``most``
    of them at most."""
    with contextlib.suppress(ConnectionClosed):
        for _ in range(most):
            await peer.send(KEEPALIVE)
            await asyncio.sleep(every)


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
async def test_a_session_pinged_only_with_keepalive_expires_and_its_peer_is_told(
    msgpack: bool,
) -> None:
    # A page left open on a quiet session (the JavaScript client's liveness pings): the
    # session expires one TTL after its attach, and the page is closed as at any expiry.
    async with (
        run_server(default_ttl=1, disconnect_retention=60) as server,
        attach(server, "open-page", create=True, msgpack=msgpack) as (peer, _),
    ):
        pinging = asyncio.create_task(keep_pinging(peer, 0.1))
        try:
            # 10 TTLs: a guard for a loaded machine; with the pings counted as activity
            # the session never expires, and this times out.
            closing = peer.closed(timeout=10)
            try:
                code, frames = await asyncio.wait_for(closing, 10)
            except TimeoutError:
                raise AssertionError("keepalive pings kept the session alive") from None
        finally:
            await stopped(pinging)
        assert code == 4404, (code, frames[-3:])
        assert frames[-1] == {"type": "closed", "reason": "session expired"}
        pongs = [f for f in frames if f["type"] == "pong"]
        assert pongs and all(f["id"] == "liveness" for f in pongs)  # answered meanwhile
        assert {f["type"] for f in frames} == {"pong", "closed"}
        status, _ = await get(server, "/api/v1/sessions/open-page")
        assert status == 404  # expired: not found


async def test_a_flood_of_keepalive_pings_is_held_to_the_frame_rate() -> None:
    async with (
        run_server(rate_limit=20, rate_limit_burst=20, rate_limit_refusals=30) as server,
        attach(server) as (flooder, _),
    ):
        frames = [{**KEEPALIVE, "id": i} for i in range(200)]
        started = asyncio.get_running_loop().time()
        with contextlib.suppress(ConnectionClosed):
            for frame in frames:
                await flooder.send(frame)
        code, answers = await flooder.closed()
        took = asyncio.get_running_loop().time() - started
        assert (code, flooder.ws.close_reason) == (4429, "rate limited")
        pongs = [f["id"] for f in answers if f["type"] == "pong"]
        refused = [f for f in answers if f["type"] == "error"]
        assert len(pongs) <= 20 + int(20 * took) + 1, (len(pongs), took)
        assert refused and all(f["code"] == "rate_limited" for f in refused)


async def test_keepalive_pings_on_one_instance_let_the_session_go_idle_on_both(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A's viewer sends keepalive pings every 0.1 s, B's is quiet: the session goes
    ``idle`` (with the pings counted, A records activity at each look and B never
    writes ``idle``), and while A's pings go on, no look records activity."""
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    idle_timeout = 0.5
    async with (
        run_server(store=url, idle_timeout=idle_timeout) as a,
        run_server(store=url, idle_timeout=idle_timeout) as b,
        attach(b, "k", create=True) as (_quiet, _),
        attach(a, "k") as (pinger, _),
    ):
        pinging = asyncio.create_task(keep_pinging(pinger, 0.1))
        try:
            await becomes(b, "k", "idle")
            idle = await a.manager.get_metadata("k")
            assert idle is not None
            await asyncio.sleep(4 * idle_timeout)  # four looks of each instance
            seen = await b.manager.get_metadata("k")
            assert seen is not None and seen.state == "idle", seen
            assert seen.last_activity_at == idle.last_activity_at, (seen, idle)
            assert seen.expires_at == idle.expires_at
        finally:
            await stopped(pinging)
        # The pings were answered all along, each with its pong.
        await pinger.send({**KEEPALIVE, "id": "last"})
        pongs = 0
        while (await pinger.recv_type("pong"))["id"] != "last":
            pongs += 1
        assert pongs >= 20, pongs


async def test_websocket_pings_are_answered_but_are_no_activity() -> None:
    # docs/protocol.md (`ping`): a WebSocket Ping, the Python client's keepalive, is
    # no frame of the protocol: a session whose peer sends only those goes idle, and
    # no look records activity.
    async with run_server(idle_timeout=0.3) as server, attach(server) as (peer, welcome):

        async def pinged() -> None:
            await asyncio.wait_for(await peer.ws.ping(), 5)  # its Pong came

        await no_activity_from(server, welcome["session"]["id"], pinged, "WebSocket Pings")


@pytest.mark.parametrize("msgpack", [False, True], ids=["json", "msgpack"])
@pytest.mark.parametrize(
    "keepalive", [False, None, 1, "true"], ids=["false", "null", "one", "string"]
)
async def test_a_ping_with_keepalive_other_than_true_is_activity(
    keepalive: object, msgpack: bool
) -> None:
    # docs/protocol.md (`ping`): only true makes a keepalive ping; any other value is
    # ignored, as an unknown field would be (never refused): a plain ping, recorded as
    # activity at the next look (the session stays idle).
    async with (
        run_server(idle_timeout=0.2) as server,
        attach(server, msgpack=msgpack) as (peer, welcome),
    ):
        session_id = welcome["session"]["id"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30.0  # waited for, however loaded the machine
        idle = await idle_while(server, session_id, partial(asyncio.sleep, 0), "nothing")
        ping = {"type": "ping", "id": "p", "keepalive": keepalive}
        while True:
            assert (await peer.request(ping, "pong"))["id"] == "p"
            seen = await server.manager.get_metadata(session_id)
            assert seen is not None and seen.state == "idle", seen
            if seen.last_activity_at > idle.last_activity_at:
                break
            assert loop.time() < deadline, "the pings were never recorded as activity"
            await asyncio.sleep(0.05)
