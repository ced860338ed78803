"""``bamboo_read_wait_seconds_total`` counts the time connections' reads actually waited
for the byte rate (server/http_wire.py), not the debt they ran into: a close ends a
wait early, and the metric must say so. Both waits are covered: a read held after a
frame ran into debt, and a reader that waits the debt a page drew (``events``)."""

from __future__ import annotations

import asyncio
import time

from tests.support import attach, run_server, token
from tests.test_byte_rate import client_frame, event_frame, read_until_closed, read_wait_seconds
from tests.test_wire_floods import upgraded_socket


async def close_session(server: object, session_id: str) -> None:
    """Another peer closes the session: every connection of it gets ``closed`` and 1000."""
    async with attach(server, session_id) as (closer, _):
        await closer.request({"type": "state", "id": "c", "state": "closed"}, "ack")


async def test_a_held_read_ended_early_by_a_close_counts_the_time_it_waited() -> None:
    """A raw peer's 150 kB frame runs about 6.5 s into debt at 20 kB a second, and its
    reads are held; the session is closed half a second later, and the server drops
    the peer after its 0.5 s close timeout (its close reply is never read: reading is
    held). The wait lasted about a second: the metric said 6.5 s, the debt."""
    config = {"rate_limit_bytes": 20_000, "rate_limit_bytes_burst": 20_000, "close_timeout": 0.5}
    async with run_server(**config) as server:
        async with attach(server, create=True) as (_, welcome):
            session_id = welcome["session"]["id"]
        path = f"/api/v1/stream/{session_id}"
        peer = await asyncio.to_thread(upgraded_socket, server.port, path)
        try:
            peer.sendall(client_frame(b'{"type":"hello"}'))
            await asyncio.to_thread(peer.recv, 65536)  # the welcome
            started = time.monotonic()
            peer.sendall(event_frame(1, "a" * 150_000))
            for _ in range(100):  # until its reads are held
                if any(c._repaid is not None for c in server._open_connections):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the peer's reads were never held")
            await asyncio.sleep(0.5)
            await close_session(server, session_id)
            reader = asyncio.to_thread(read_until_closed, peer)
            await asyncio.wait_for(reader, 5)  # dropped within the close timeout
            elapsed = time.monotonic() - started
        finally:
            peer.close()
        for _ in range(50):  # the server's side of the drop, a turn of the loop later
            if not any(c._repaid is not None for c in server._open_connections):
                break
            await asyncio.sleep(0.02)
        waited = await read_wait_seconds(server)
        assert 0.4 < waited <= elapsed + 0.1, (waited, elapsed)


async def test_a_reader_woken_early_by_a_close_from_the_debt_of_a_page_counts_its_wait() -> None:
    """A page of 900 kB draws about 11 s of debt at 5 kB a second (a sixteenth of its
    size). The session is closed half a second later: the peer's close reply, read
    while the reader waits, runs into debt too, so reads are held as well, and the
    server drops the connection at its close timeout (0.5 s), which ends both waits.
    The metric counted the 11 s, and then the close reply's debt on top."""
    config = {"rate_limit_bytes": 5_000, "rate_limit_bytes_burst": 5_000, "close_timeout": 0.5}
    async with run_server(store="memory://", **config) as server:
        async with attach(server, create=True) as (peer, welcome):
            session_id = welcome["session"]["id"]
            await server.manager.append_events(session_id, [(token("x" * 900_000), None)])
            await peer.recv_type("event")
            started = time.monotonic()
            reply = await peer.request({"type": "events", "id": 1, "after_seq": 0}, "events")
            assert len(reply["events"]) == 1
            await asyncio.sleep(0.5)
            loop = asyncio.get_running_loop()
            held = [
                c for c in server._open_connections if c.read_waits.held_until > loop.time() + 5
            ]
            assert len(held) == 1, "the reader waits the page's debt"
            await close_session(server, session_id)
            code, _ = await peer.closed()
            assert code == 1000
        for _ in range(100):  # dropped at the close timeout
            if held[0] not in server._open_connections:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the reader's wait ends a turn of the loop later
        elapsed = time.monotonic() - started
        waited = await read_wait_seconds(server)
        assert 0.9 < waited <= elapsed, (waited, elapsed)
        assert held[0].read_waits.held_until == 0.0 and held[0].read_waits.waited == waited


async def test_waits_served_in_full_count_their_debts() -> None:
    """Frames past the burst wait their debts in full: the metric counts at least those,
    and no more than the time that passed."""
    rate, burst, size = 100_000, 50_000, 75_000
    config = {"rate_limit_bytes": rate, "rate_limit_bytes_burst": burst}
    async with run_server(**config) as server:
        started = time.monotonic()
        async with attach(server) as (publisher, _):
            for i in range(3):
                await publisher.send({"type": "event", "id": i, "event": token("x" * size)})
            for _ in range(3):
                await publisher.recv_type("ack")
        for _ in range(100):  # the wait after the last frame, over
            if not any(c._repaid is not None for c in server._open_connections):
                break
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        waited = await read_wait_seconds(server)
        assert (3 * size - burst) / rate * 0.95 <= waited <= elapsed, (waited, elapsed)
