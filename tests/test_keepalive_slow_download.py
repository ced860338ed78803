"""The server's keepalive and a peer reading a large backlog over a slow link: the
server's Ping goes out behind what it wrote before it, which waits in the kernel's send
queue (megabytes on Linux), so the keepalive counts the peer's TCP taking that output,
at ``MIN_LINK_RATE`` at least and until the Ping itself is through, as a sign of life.
Before, a replay that took longer than ``--ping-timeout`` past its Ping to drain was cut
off with 1011, and the client resumed it on its next connection, and was cut off again.
A link that stops carrying the server's bytes is still closed."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.app import BambooServer
from tests.proxies import HttpProxy
from tests.replay_support import metric
from tests.support import attach, get, run_server, token

PING_INTERVAL = 0.5
PING_TIMEOUT = 1.0
EVENTS = 400
EVENT_BYTES = 10_000  # 4 MB of backlog: seconds of it wait in the kernel at the rate
DOWNLINK_RATE = 400_000  # bytes a second
# A closed loop's deadline is the keepalive's own plus this: on a loaded machine (CI beside
# other suites) the server's looks and this test's polls run late by seconds. A link the
# keepalive never closes (the bug the last test guards) stays open for good, so the
# margin costs the test nothing of what it shows.
LOAD_ALLOWANCE = 8.0
KEEPALIVE = {
    "ping_interval": PING_INTERVAL,
    "ping_timeout": PING_TIMEOUT,
    "close_timeout": 1.0,
    "rate_limit_bytes": 0,
    "replay_page_timeout": 60.0,  # the keepalive's case, not the replay's
    "durability": "os",
}


async def keepalive_closes(server: BambooServer) -> float:
    _, text = await get(server, "/metrics")
    closes = 'bamboo_closes_total{code="1011"}'
    return metric(text, closes) if closes in text else 0.0


async def backlog(server: BambooServer, events: int = EVENTS) -> str:
    """A session holding ``events`` events of EVENT_BYTES; its id."""
    async with attach(server, role="agent") as (peer, welcome):
        for number in range(events):
            content = secrets.token_hex(EVENT_BYTES // 2)  # random: nothing to squeeze
            await peer.send({"type": "event", "id": number, "event": token(content)})
        for _ in range(events):
            await peer.recv_type("ack", timeout=30)
    session_id: str = welcome["session"]["id"]
    return session_id


async def test_a_slow_reader_takes_a_large_replay_on_one_connection() -> None:
    async with run_server(**KEEPALIVE) as server:
        session_id = await backlog(server)
        proxy = HttpProxy(server.port, downlink_rate=DOWNLINK_RATE)
        port = await proxy.start()
        subprotocols: Any = ["bamboo.v1"]
        started, seqs = time.monotonic(), []
        try:
            async with connect(
                f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}",
                subprotocols=subprotocols,
                ping_interval=None,
                compression=None,
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "last_seq": 0}))
                while len(seqs) < EVENTS:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "event":
                        seqs.append(frame["seq"])
        finally:
            await proxy.close()
        took = time.monotonic() - started
        assert seqs == list(range(1, EVENTS + 1))
        assert took > PING_INTERVAL + 3 * PING_TIMEOUT, f"crossed in {took:.1f} s"
        assert await keepalive_closes(server) == 0


async def test_a_reader_whose_link_stops_mid_replay_is_closed() -> None:
    # A backlog that fits in the kernel's buffers: the keepalive's Ping is written at
    # once (one that waits for room in the transport's buffer is not looked at, as the
    # protocol says), and waits behind bytes that no longer move.
    async with run_server(**KEEPALIVE) as server:
        session_id = await backlog(server, events=EVENTS // 4)
        proxy = HttpProxy(server.port, downlink_rate=DOWNLINK_RATE)
        port = await proxy.start()
        subprotocols: Any = ["bamboo.v1"]
        try:
            async with connect(
                f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}",
                subprotocols=subprotocols,
                ping_interval=None,
                compression=None,
                close_timeout=1,
            ) as ws:
                await ws.send(json.dumps({"type": "hello", "last_seq": 0}))
                while json.loads(await ws.recv())["type"] != "event":
                    pass
                proxy.freeze()  # a tunnel: no byte either way, no FIN, no RST
                stopped = time.monotonic()
                bound = PING_INTERVAL + 2 * PING_TIMEOUT + 1.0 + 1.0  # a look, a close
                deadline = bound + LOAD_ALLOWANCE
                while time.monotonic() - stopped < deadline:
                    if await keepalive_closes(server) > 0:
                        break
                    await asyncio.sleep(0.05)
                ended = time.monotonic() - stopped
        except ConnectionClosed:
            pass
        finally:
            await proxy.close()
        assert await keepalive_closes(server) == 1, f"not closed {ended:.1f} s in"
