"""How a connection's ``history`` and ``events`` requests wait for their peer's read
allowance (server/page_requests.py): in turn, before each page is read, so that a
request waiting holds no page; counted in ``bamboo_page_wait_seconds_total`` for the
time actually waited (a close ends a wait early); never at the defaults for a client
reading a long log page by page."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
import tracemalloc

from bamboo_session.server.limits import REPLY_SHARE
from tests.support import attach, run_server, token
from tests.test_byte_rate import client_frame, read_bytes, read_wait_seconds
from tests.test_byte_rate_waits import close_session
from tests.test_replay_allowance import metric
from tests.test_wire_floods import upgraded_socket

TEXT = "x" * 50_000


async def page_wait_seconds(server: object) -> float:
    return await metric(server, "bamboo_page_wait_seconds_total")


async def test_pages_pipelined_on_one_connection_wait_their_debt_in_turn() -> None:
    """A small ``events`` request draws a page up to 1 MiB: a peer pipelining such
    requests gets each answered, in order, each page once the debt of the ones before
    it is repaid."""
    # A page costs a sixteenth of its size: 100 kB pages, 6.25 kB each.
    rate, burst = 200_000 // REPLY_SHARE, 100_000 // REPLY_SHARE
    async with run_server(rate_limit_bytes=rate, rate_limit_bytes_burst=burst) as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            await server.manager.append_events(session_id, [(token(TEXT), None)] * 2)
            requests = 6  # each draws both events: about 100 kB
            started = time.monotonic()
            for i in range(requests):
                await peer.send({"type": "events", "id": i, "after_seq": 0, "limit": 10})
            answered = []
            while len(answered) < requests:
                reply = await peer.recv()
                if reply["type"] in ("presence", "event"):  # the two events, live
                    continue
                assert reply["type"] == "events" and len(reply["events"]) == 2, reply["type"]
                answered.append(reply["id"])
            elapsed = time.monotonic() - started
            assert answered == list(range(requests))
        # The pages cost about 6.25 kB each. Each page past the burst waits for the
        # ones before it to be repaid: the last one comes once all but it are.
        drawn = (requests - 1) * 2 * len(TEXT) // REPLY_SHARE - burst
        assert elapsed >= drawn / rate * 0.9
        assert await page_wait_seconds(server) >= drawn / rate * 0.9


async def test_a_client_reading_a_long_log_page_by_page_waits_nothing_by_default() -> None:
    """Pages cost a sixteenth of their size: 8 pages of about 1 MiB (past the 4 MiB
    burst, had they cost their size) are read without a wait at the defaults."""
    async with run_server() as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            events = [(token("x" * 500_000), None)] * 2
            await server.manager.append_events(session_id, events)
            for i in range(8):
                await peer.send({"type": "events", "id": i, "after_seq": 0})
                reply = await peer.recv_type("events")
                assert len(reply["events"]) == 2
        assert await page_wait_seconds(server) == 0.0
        assert await read_wait_seconds(server) == 0.0


async def test_requests_waiting_for_their_peers_debt_hold_no_page() -> None:
    """One peer draws a page of 900 kB, which leaves its address 10 s of debt; then 8
    more connections from it ask for the page. They wait before it is read: none gets
    a byte meanwhile, and nothing of 8 pages is held (tracemalloc; the peers are raw
    sockets, which keep nothing in this process)."""
    peers_count, size = 8, 900_000
    config = {"rate_limit_bytes": 5_000, "rate_limit_bytes_burst": 5_000}  # a page: 56 kB
    request = client_frame(b'{"type":"events","id":1,"after_seq":0}')
    tracemalloc.start()
    try:
        async with run_server(store="memory://", ring_bytes=64 * 1024, **config) as server:
            async with attach(server) as (_, welcome):
                session_id = welcome["session"]["id"]
                await server.manager.append_events(session_id, [(token("x" * size), None)])
                peers = []
                for _ in range(peers_count + 1):
                    path = f"/api/v1/stream/{session_id}"
                    peer = await asyncio.to_thread(upgraded_socket, server.port, path)
                    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                    peer.sendall(client_frame(b'{"type":"hello"}'))
                    await asyncio.to_thread(peer.recv, 65536)  # the welcome
                    peers.append(peer)
                try:
                    first, *waiting = peers
                    first.sendall(request)
                    await asyncio.to_thread(read_bytes, first, size)  # the page: in debt
                    await asyncio.sleep(0.3)  # the presence frames, sent and read
                    for peer in waiting:
                        peer.setblocking(False)
                        while True:
                            try:
                                peer.recv(65536)
                            except BlockingIOError:
                                break
                    gc.collect()
                    before = tracemalloc.get_traced_memory()[0]
                    for peer in waiting:
                        peer.sendall(request)
                    await asyncio.sleep(1.0)
                    for peer in waiting:
                        try:
                            got = peer.recv(65536)
                        except BlockingIOError:
                            got = b""
                        assert got == b"", "a page came to a peer in debt"
                    gc.collect()
                    held = tracemalloc.get_traced_memory()[0] - before
                finally:
                    for peer in peers:
                        peer.close()
    finally:
        tracemalloc.stop()
    # Had the pages been read and then waited, 8 of 900 kB: 7 MB.
    assert held < 1_000_000, f"{held} bytes held by {peers_count} requests in debt"


async def test_a_page_wait_ended_early_by_a_close_counts_the_time_it_waited() -> None:
    """A page of 900 kB leaves about 11 s of debt at 5 kB a second (a sixteenth of its
    size), and the peer's next request waits it. The session is closed half a second
    later: the peer gets ``closed`` and 1000 at once, its request is not answered, and
    the metric counts the half second or so waited, not the debt."""
    config = {"rate_limit_bytes": 5_000, "rate_limit_bytes_burst": 5_000, "close_timeout": 0.5}
    async with run_server(store="memory://", **config) as server:
        async with attach(server, create=True) as (peer, welcome):
            session_id = welcome["session"]["id"]
            await server.manager.append_events(session_id, [(token("x" * 900_000), None)])
            await peer.recv_type("event")
            reply = await peer.request({"type": "events", "id": 1, "after_seq": 0}, "events")
            assert len(reply["events"]) == 1
            started = time.monotonic()
            await peer.send({"type": "events", "id": 2, "after_seq": 0})
            await asyncio.sleep(0.5)
            await close_session(server, session_id)
            code, frames = await peer.closed()
            elapsed = time.monotonic() - started
            assert code == 1000 and frames[-1]["type"] == "closed"
            assert not [f for f in frames if f["type"] == "events"]
        for _ in range(50):  # the wait ends a turn of the loop after the connection
            if await page_wait_seconds(server) > 0:
                break
            await asyncio.sleep(0.02)
        waited = await page_wait_seconds(server)
        assert 0.4 < waited <= elapsed, (waited, elapsed)
