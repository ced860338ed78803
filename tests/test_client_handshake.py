"""Opening a connection (protocol/client/handshake.py) against scripted servers: what
a refusal during a reconnect says, and that a handshake cut short leaves no socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection

from bamboo_session.protocol.client import BambooClient, ConnectionLost, Refused, SessionEnded
from bamboo_session.protocol.codec import JSON
from bamboo_session.protocol.frames import Welcome
from bamboo_session.protocol.models import SessionMetadata
from tests.test_client_resume import FAST, TIMEOUT, fake_server, url_of, welcome


async def test_close_while_a_reconnect_waits_for_welcome_closes_that_socket() -> None:
    waiting_for_welcome = asyncio.Event()
    second_closed = asyncio.Event()

    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
            await ws.close(1012)
        else:
            waiting_for_welcome.set()  # and never send it
            await ws.wait_closed()
            second_closed.set()

    async with fake_server(script) as hellos:
        client = await BambooClient.connect(url_of(hellos), "f", **FAST)
        await asyncio.wait_for(waiting_for_welcome.wait(), TIMEOUT)
        await client.close()
        await asyncio.wait_for(second_closed.wait(), 3.0)


async def test_a_refusal_while_reconnecting_says_why_itself() -> None:
    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        if attempt == 1:
            await welcome(ws)
            await ws.send(json.dumps({"type": "closed", "reason": "server restarting"}))
            await ws.close(1012, "server restarting")
        else:
            await ws.close(4409, "session closed")  # closed meanwhile: no frame, a close

    async with fake_server(script) as hellos:
        # Publish-only: a client that takes events would ask the HTTP API whether any
        # were appended while it was away, which this WebSocket-only server cannot
        # answer (tests/test_client_closed_sessions.py covers that).
        client = await BambooClient.connect(url_of(hellos), "f", receive_events=False, **FAST)
        async for _ in client.events():
            pass  # ends: the session ended
        with pytest.raises(SessionEnded) as ended:
            await client.ping()
        assert ended.value.reason == "session closed"
        await client.close()


async def test_welcomes_that_close_at_once_keep_backing_off_and_count_as_retries() -> None:
    """A server that welcomes, then closes with a resumable code straight away, is not
    a recovery: the backoff grows and max_retries still ends the client."""

    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        await welcome(ws)
        await ws.close(4429, "too slow to read")

    async with fake_server(script) as hellos:
        client = await BambooClient.connect(
            url_of(hellos), "f", max_retries=4, backoff_initial=0.01, backoff_max=10.0
        )
        with pytest.raises(ConnectionLost, match="gave up after 4 attempts"):
            async for _ in client.events():
                pass
            await client.ping()
        assert len(hellos) <= 5  # the first connection and 4 attempts, not a storm
        await client.close()


async def test_a_welcome_to_another_session_is_refused() -> None:
    """A broken or hostile server (or a proxy that crossed streams) must not pass off
    another session's events as this one's: the client refuses such a welcome, as the
    JavaScript client does, and leaves no socket open."""

    async def script(ws: ServerConnection, hello: dict[str, Any], attempt: int) -> None:
        meta = SessionMetadata(id="other", epoch="E")
        await ws.send(JSON.encode(Welcome("c_1", meta, "E", 0, False, 0)).decode())
        await ws.wait_closed()

    async with fake_server(script) as hellos:
        with pytest.raises(Refused, match="malformed welcome: session other, not f"):
            await asyncio.wait_for(BambooClient.connect(url_of(hellos), "f", **FAST), TIMEOUT)
