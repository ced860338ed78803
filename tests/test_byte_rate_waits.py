"""``bamboo_read_wait_seconds_total`` counts the time connections' reads actually waited
for the byte rate (server/http_wire.py), not the debt they ran into: a close ends a
wait early, and the metric must say so. (A page's wait for its peer's read allowance is
counted apart: tests/test_read_allowance_waits.py.)"""

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


async def test_waits_served_in_full_count_their_debts() -> None:
    """Frames past the burst wait their debts: the peer is served no faster than the
    rate, and the metric counts most of the debts, and no more than the time that
    passed. Not all of them: a hold waits the debt as it stands when reading stops,
    and the bucket refills while the server is busy with the frames too (a tenth of
    the debt, under a suite run with three processes on two cores)."""
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
        debt_seconds = (3 * size - burst) / rate
        assert debt_seconds * 0.95 <= elapsed, (waited, elapsed)
        assert debt_seconds * 0.75 <= waited <= elapsed, (waited, elapsed)
