"""A page of the log read for a peer holds about the page, not what was asked for, on
every store (tests/server_backends.py), measured with tracemalloc around real requests
on a real server, over a log of large events: an ``events`` request for 10,000 events
(the server's maximum), and a resume from the log's start, each of whose pages the
server asks for by the hundred.

The Redis store read every event the page's count allowed (up to ``--max-events-page``,
the whole log of a session at its byte cap: 256 MiB), then kept the first megabyte: a
peer with eight such requests made the server hold gigabytes (a 90 MB log read by four
requests at once took the server's peak from 55 MB to 375 MB).
"""

from __future__ import annotations

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, run_server
from tests.test_memory_bounds_reads import peak_during

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
# Durable stores only: the log is filled by one server and read by the next, which
# holds none of it in memory to begin with.
pytestmark = [pytest.mark.usefixtures("server_store"), pytest.mark.durable]

BIG = 900_000
COUNT = 24  # 24 x 900 KB: about 21 MB of log; reading it all would hold more
SETTINGS = {"rate_limit_bytes": 0}  # 21 MB through one connection


async def fill_with_large_events() -> None:
    async with run_server(**SETTINGS) as server:
        async with attach(server, "big", create=True) as (peer, _):
            for i in range(COUNT):
                event = {"type": "token", "content": f"{i:02}" + "b" * BIG}
                await peer.request({"type": "event", "id": i, "event": event}, "ack")


async def test_an_events_page_reads_about_the_page() -> None:
    await fill_with_large_events()
    async with run_server(**SETTINGS) as server, attach(server, "big") as (peer, _):
        request = {"type": "events", "id": "e", "after_seq": 0, "limit": 10_000}
        reply, peak = await peak_during(lambda: peer.request(request, "events"))
        assert [e["seq"] for e in reply["events"]] == [1]  # two would pass --max-page-bytes
        assert reply["last_seq"] == COUNT
        # One event's copies: as read, decoded, encoded, and the client's.
        assert peak < 8 * BIG, f"an events page of one event held {peak} bytes"


async def test_a_resume_from_the_start_reads_about_a_page() -> None:
    await fill_with_large_events()
    async with run_server(**SETTINGS) as server:

        async def first_replayed() -> dict[str, object]:
            async with attach(server, "big", last_seq=0) as (peer, welcome):
                assert welcome["resumed"] and welcome["replay"] == COUNT
                return await peer.recv_type("event")

        event, peak = await peak_during(first_replayed)
        assert event["seq"] == 1
        assert peak < 8 * BIG, f"a resume's first page held {peak} bytes"
