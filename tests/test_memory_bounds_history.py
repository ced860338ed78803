"""A ``history`` page reads about what it returns, not its count, on every durable store
(tests/server_backends.py), measured with tracemalloc around a real request on a real
server: large messages, then small ones, then a page of up to 1,000 after a restart.

The server reads a page newest first in chunks, the next chunk's count guessed from
what the last one weighed: after the small messages it asked the store for 256 more,
and the store read them all, large as they were, to return one (h426: 100 messages of
900 KB and 16 small ones held 111-177 MB to answer with 17). The store now takes the
budget left and stops at the first message past it.
"""

from __future__ import annotations

import pytest

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
