"""Pages a peer draws over WebSocket on many connections at once stay within its read
allowance's burst (server/read_allowance.py): a ``history`` or ``events`` request, and
each page of a resume's replay, takes a page's worth from the allowance before its
page is read, given back once the page itself is charged, as an HTTP request does.
Checked before their reads and charged after them, the requests of 20 connections sent
together all found the allowance as it was before any of their pages. Real server,
real WebSocket peers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.server.limits import REPLY_SHARE
from tests.support import run_server, stream_url

CONTENT = "x" * 10_000
MESSAGES = 96  # a history page of them all is about 970 kB, and costs about 60 kB
CONNECTIONS = 20
# An allowance of 70 kB at 1 kB a second: about one such page.
RATE, BURST = 1_000, 70_000
LIMITS = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": BURST}


async def a_log(server: Any) -> tuple[str, str]:
    """A session of MESSAGES messages of 10 kB: its id and epoch."""
    session = await server.manager.create_session(None, session_id="long")
    message = {"type": "message", "message": {"role": "user", "content": CONTENT}}
    await server.manager.append_events("long", [(message, None)] * MESSAGES)
    return session.metadata.id, session.metadata.epoch


@contextlib.asynccontextmanager
async def many_peers(
    server: Any, session_id: str, count: int, **hello: Any
) -> AsyncIterator[list[ClientConnection]]:
    """``count`` WebSocket peers from one address, each of which has said ``hello``
    (all sent before any ``welcome`` is read); hung up without a closing handshake (the
    server, not reading a peer that waits for its debt, would take the close timeout)."""
    url = stream_url(server, session_id)
    peers = [await connect(url, subprotocols=["bamboo.v1"]) for _ in range(count)]  # type: ignore[list-item]
    try:
        await asyncio.gather(*(ws.send(json.dumps({"type": "hello", **hello})) for ws in peers))
        for ws in peers:
            assert json.loads(await ws.recv())["type"] == "welcome"
        yield peers
    finally:
        for ws in peers:
            ws.transport.abort()
        await asyncio.gather(*(ws.wait_closed() for ws in peers))


async def frames_within(ws: ClientConnection, kind: str, seconds: float) -> list[int]:
    """The sizes of the frames of ``kind`` that come on ``ws`` within ``seconds``."""
    sizes: list[int] = []
    deadline = time.monotonic() + seconds
    with contextlib.suppress(TimeoutError):
        while (left := deadline - time.monotonic()) > 0:
            frame = await asyncio.wait_for(ws.recv(), left)
            if json.loads(frame)["type"] == kind:
                sizes.append(len(frame))
    return sizes


async def test_history_pages_asked_on_many_connections_at_once_stay_within_the_burst() -> None:
    async with run_server(**LIMITS) as server:
        session_id, _ = await a_log(server)
        async with many_peers(server, session_id, CONNECTIONS) as peers:
            request = json.dumps({"type": "history", "id": 1, "limit": 1000})
            await asyncio.gather(*(ws.send(request) for ws in peers))
            pages = await asyncio.gather(*(frames_within(ws, "history", 3) for ws in peers))
            answered = sum(map(len, pages))
            # Each request let through takes a page's worth (64 KiB) of the 70 kB: the
            # second finds 4 kB left, the third a debt. All 20 got theirs: 20 pages.
            assert answered <= 2, answered
            allowance = server.services.read_allowances.of("addr:127.0.0.1")
            assert allowance is not None and allowance.debt() < 2 * 60_000 / RATE


async def test_replays_on_many_connections_at_once_stay_within_the_burst() -> None:
    # The replay ring holds a few events: every resumer's pages come from the store
    # (up to 256 KiB each, 16 kB of the allowance), read while the others check it.
    async with run_server(ring_bytes=64 * 1024, **LIMITS) as server:
        session_id, epoch = await a_log(server)
        async with many_peers(server, session_id, CONNECTIONS, last_seq=0, epoch=epoch) as peers:
            started = time.monotonic()
            events = await asyncio.gather(*(frames_within(ws, "event", 2) for ws in peers))
            elapsed = time.monotonic() - started
        got = sum(map(sum, events))
        # The burst and the rate, at a sixteenth, and two pages of 256 KiB more. Before,
        # every resumer's first page passed the check at once: 20 pages, about 5 MB.
        allowed = (BURST + RATE * elapsed) * REPLY_SHARE + 2 * 256 * 1024
        assert got <= allowed, (got, allowed)
