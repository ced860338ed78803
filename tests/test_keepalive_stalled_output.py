"""The keepalive and a peer whose output fills the connection's buffer: websockets'
``ping()`` waits for room in it before the Pong's timer starts, so a peer that asked
for a few large pages and then read nothing was never looked at again, its
connection, pages and presence held for as long as it pleased. While the Ping waits,
the server now closes it 1011 once its TCP acknowledged nothing, and it sent nothing,
over a whole stall window (link_progress.py ``STALL_WINDOW``, made short here); a peer
reading that backlog slowly, in bursts, is kept."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest

from bamboo_session.server import link_progress
from bamboo_session.server.app import BambooServer
from tests.replay_support import stalled_resumer
from tests.support import attach, run_server, token
from tests.test_keepalive_close import closed_by_keepalive_within, connections
from tests.test_wire_floods import masked_frame

PING_INTERVAL = 2.0
STALL_WINDOW = 3.0  # the window's floor, in place of minutes
CLOSE_TIMEOUT = 1.0
WRITE_LIMIT = 256 * 1024
CONFIG = {
    "ping_interval": PING_INTERVAL,
    "ping_timeout": 1.0,
    "close_timeout": CLOSE_TIMEOUT,
    "rate_limit_bytes": 0,
    "write_limit": WRITE_LIMIT,
    "durability": "os",
}
EVENTS = 40  # of 60 KB: a page of them is cut at about 1 MiB
PAGES = 7  # 7 MiB asked for, past the kernel's buffer, under the send queue's 8 MiB


@pytest.fixture(autouse=True)
def short_stall_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_progress, "STALL_WINDOW", STALL_WINDOW)


async def filled_peer(server: BambooServer, agent: Any, session_id: str) -> socket.socket:
    """A raw peer of the session that asked for PAGES pages of events and has read none
    of them, once the server's buffer for it holds more than ``WRITE_LIMIT``."""
    peer = await asyncio.to_thread(stalled_resumer, server.port, session_id, EVENTS)
    requests = (
        json.dumps({"type": "events", "id": k, "after_seq": 0, "limit": 1000}).encode()
        for k in range(PAGES)
    )
    peer.sendall(b"".join(masked_frame(request, 1) for request in requests))
    began, held = time.monotonic(), 0
    while held <= WRITE_LIMIT and time.monotonic() - began < PING_INTERVAL / 2:
        await asyncio.sleep(0.05)
        held = max(unsent(server, agent), default=0)
    assert held > WRITE_LIMIT, "the buffer did not fill before the Ping"
    return peer


async def session_with_backlog(agent: Any) -> None:
    for i in range(EVENTS):
        await agent.send({"type": "event", "id": i, "event": token(f"{i}:" + "e" * 60_000)})
    for _ in range(EVENTS):
        await agent.recv_type("ack", timeout=30)


async def test_a_peer_that_filled_its_buffer_and_reads_nothing_is_closed() -> None:
    async with run_server(**CONFIG) as server, attach(server, role="agent") as (agent, welcome):
        await session_with_backlog(agent)
        opened = time.monotonic()
        stalled = await filled_peer(server, agent, welcome["session"]["id"])
        try:
            # Its first Ping waits for room from PING_INTERVAL on; the window then
            # passes with nothing acknowledged, and the close takes its timeout.
            bound = PING_INTERVAL + STALL_WINDOW + CLOSE_TIMEOUT + 2.0
            await closed_by_keepalive_within(server, opened, bound)
        finally:
            stalled.close()


async def test_a_peer_reading_that_backlog_slowly_in_bursts_is_kept() -> None:
    # Its receive buffer is tiny (stalled_resumer): each burst takes what it holds,
    # some 8 KiB, and its TCP acknowledges once the window reopens: a few KiB/s, a
    # burst a second, three to a window.
    async with run_server(**CONFIG) as server, attach(server, role="agent") as (agent, welcome):
        await session_with_backlog(agent)
        opened = time.monotonic()
        reader = await filled_peer(server, agent, welcome["session"]["id"])
        reader.setblocking(False)
        taken = 0
        try:
            while time.monotonic() - opened < PING_INTERVAL + 3 * STALL_WINDOW:
                await asyncio.sleep(1.0)
                taken += len(reader.recv(64 * 1024))  # raises once the server closed it
                open_now, keepalive_closes = await connections(server)
                assert (open_now, keepalive_closes) == (2, 0), f"closed after {taken} bytes"
            assert max(unsent(server, agent)) > 0, "the backlog ran out while it read"
            assert taken >= 10 * 4096, f"it read {taken} bytes"
        finally:
            reader.close()


def unsent(server: Any, agent: Any) -> list[int]:
    """What waits in the transport's buffer of each connection but ``agent``'s."""
    return [
        connection.transport.get_write_buffer_size()
        for connection in server._open_connections
        if connection.transport.get_extra_info("peername")
        != agent.ws.transport.get_extra_info("sockname")
    ]
