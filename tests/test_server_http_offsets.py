"""The session list's ``offset`` at the top of its range, on every store: a page past
the end is empty, with the total, as the protocol says, however far past.

The Redis store handed the offset to its script as a Lua number, which Redis 7 turns
into text such as ``4.6116860184273879e+18`` for ``ZRANGEBYSCORE … LIMIT``: any offset
past 2^53 was answered 503, "storage failed", for a request with nothing wrong in it.
"""

from __future__ import annotations

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")

TOP = 2**63 - 1  # the largest offset the HTTP API takes (above it: 400)


async def test_an_offset_far_past_the_end_is_an_empty_page() -> None:
    async with run_server() as server:
        for session_id in ("a", "b"):
            async with attach(server, session_id, create=True, title="Chat"):
                pass
        for query in (
            f"offset={TOP}",
            f"offset={2**62}&sort_order=asc",
            f"offset={2**53 + 2}&sort_by=message_count",
            # A filter the store's index cannot answer alone: another path through it.
            f"offset={TOP}&title_contains=Chat",
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 200, (query, body)
            assert body["sessions"] == [] and body["total"] == 2, (query, body)
            assert body["offset"] == int(query.split("&")[0].removeprefix("offset="))
