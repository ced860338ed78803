"""A ``history`` page, and the whole history over HTTP, read about what they return, not
their count, on every durable store (tests/server_backends.py), measured with
tracemalloc around a real request on a real server after a restart: large messages,
then small ones, then a page of up to 1,000; small ones, then large ones, then
``GET /api/v1/sessions/{id}``.

The server reads a page newest first in chunks, the next chunk's count guessed from
what the last one weighed: after the small messages it asked the store for 256 more,
and the store read them all, large as they were, to return one (h426: 100 messages of
900 KB and 16 small ones held 111-177 MB to answer with 17). The store now takes the
budget left and stops at the first message past it. The whole history is read oldest
first, and guessed the same way: after the small messages, one read of every large one
(h434); the store now reads it forwards within the page's budget (``get_history_from``).
"""

from __future__ import annotations

import asyncio
import http.client

import pytest

from bamboo_session.protocol.models import Message, Session
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, run_server
from tests.test_memory_bounds_reads import peak_during

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
# Durable stores only: the history is written by one server and read by the next,
# which holds none of it in memory to begin with.
pytestmark = [pytest.mark.usefixtures("server_store"), pytest.mark.durable]

BIG = 900_000
LARGE = 24  # 24 x 900 KB: about 21 MB of history; reading it all would hold more
SMALL = 16  # the server's first chunk: its weight makes the next chunk's count 256
SETTINGS = {"rate_limit_bytes": 0}  # 21 MB through one connection


async def fill_large_then_small() -> None:
    async with run_server(**SETTINGS) as server:
        async with attach(server, "big", create=True) as (peer, _):
            for i in range(LARGE + SMALL):
                content = f"{i:02}" + ("b" * BIG if i < LARGE else "")
                message = {"role": "assistant", "content": content}
                await peer.request({"type": "message", "id": i, "message": message}, "ack")


async def test_a_history_page_reads_about_its_bytes() -> None:
    await fill_large_then_small()
    async with run_server(**SETTINGS) as server, attach(server, "big") as (peer, _):
        request = {"type": "history", "id": "h", "limit": 1000}
        reply, peak = await peak_during(lambda: peer.request(request, "history"))
        # The small ones and one large one: a second would pass --max-page-bytes.
        assert [m["content"][:2] for m in reply["messages"]] == [
            f"{i:02}" for i in range(LARGE - 1, LARGE + SMALL)
        ]
        assert reply["has_more"]
        # One or two large messages' copies: as read, decoded, encoded, the client's.
        assert peak < 8 * BIG, f"a history page of one large message held {peak} bytes"


def read_whole(port: int, path: str) -> tuple[int, bytes]:
    """The messages of a whole-history answer, counted as its body streams by (none of
    it kept, so that what is measured is the server's), and the body's last bytes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        count, tail = 0, b""
        while chunk := response.read(1 << 16):
            seen = tail + chunk  # a key cut between two reads is counted once
            count += seen.count(b'"role":') - tail.count(b'"role":')
            tail = seen[-16:]
        return count, tail
    finally:
        connection.close()


async def test_the_whole_history_over_http_reads_about_a_page_at_a_time() -> None:
    # Small messages, then large ones: the first read's weight made the next read's
    # count 256, and every large message was read to answer with one per page.
    async with run_server(**SETTINGS) as server:
        session = Session.new("whole")
        session.messages = [
            Message.assistant(f"{i:02}" + ("b" * BIG if i >= SMALL else ""))
            for i in range(SMALL + LARGE)
        ]
        await server.storage.create_session(session)
    async with run_server(**SETTINGS) as server:
        path = "/api/v1/sessions/whole"
        (count, tail), peak = await peak_during(
            lambda: asyncio.to_thread(read_whole, server.port, path)
        )
        assert count == SMALL + LARGE and tail.endswith(b"]}"), (count, tail)
        # A page of one large message at a time (--max-page-bytes, 1 MiB), in its
        # copies: as read, decoded, encoded, framed.
        assert peak < 8 * BIG, f"the whole history held {peak} bytes"
