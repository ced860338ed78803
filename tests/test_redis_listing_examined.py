"""What a Redis listing says it examined (``SessionListResult.examined``, what the
server charges a listing for: server/http_pages.py) is what list.lua read: the
members of its source, a straight page's offset walked over included. Before, it was
the calls made times a step's 250 candidates, whatever they read: a user of 3
sessions was charged for 250 at each listing (8 KB of its read allowance), and a
deep page off an order for one step whatever its offset. Real redis-server; the HTTP
case through a real server, real sockets, under auth."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from bamboo_session.persistence import SessionFilter, SortBy, open_storage
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Session
from tests.auth_support import SECRET, make_token
from tests.redis_server import RedisServer, prefix_for
from tests.support import run_server
from tests.test_http_read_limits import in_thread, status_of

STEP = 10  # candidates per list.lua call: the big user's are read in 5 calls
SMALL, BIG = 3, 45


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    storage = cast(RedisStorage, await open_storage(redis_server.url(prefix=prefix_for(tmp_path))))
    storage.list_step = STEP
    try:
        for user, count in (("small", SMALL), ("big", BIG)):
            for number in range(count):
                await storage.create_session(
                    Session.new(f"{user}-{number}", user_id=user, title=f"chat {number}")
                )
        yield storage
    finally:
        await storage.close()


async def examined(store: RedisStorage, **query: object) -> int:
    return (await store.list_sessions(SessionFilter(**query))).examined  # type: ignore[arg-type]


async def test_a_listing_says_it_examined_what_redis_read(store: RedisStorage) -> None:
    # A few sessions: a page straight off the user's order, and one call that checks
    # a title or sorts by another key, each reads the user's 3.
    assert await examined(store, user_id="small") == SMALL
    assert await examined(store, user_id="small", title_contains="zzz") == SMALL
    assert await examined(store, user_id="small", sort_by=SortBy.UPDATED_AT) == SMALL
    # Many, read in steps: every one of them, once (not 5 steps of 10: 50).
    assert await examined(store, user_id="big", title_contains="zzz") == BIG
    assert await examined(store, title_contains="zzz") == SMALL + BIG
    # Straight off an order: the offset walked over and the page.
    assert await examined(store, user_id="big", offset=20, limit=5) == 25
    assert await examined(store, user_id="big", offset=40, limit=10) == BIG
    assert await examined(store, user_id="big", offset=100, limit=10) == BIG


async def test_a_user_of_few_sessions_lists_them_far_more_often_than_one_of_many(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A read allowance of 128 KiB, refilled at 64 bytes a second: a user of 3 sessions
    lists them 30 times back to back (about 200 bytes each: its answer and 3 sessions
    examined; before, 8 KB each, 429 from the 16th); a user whose 300 sessions a title
    matches none of is refused 429 within 30 (9,600 bytes each)."""
    store = redis_server.url(prefix=prefix_for(tmp_path))
    limits = {"rate_limit_bytes": 64, "rate_limit_bytes_burst": 128 * 1024}
    async with run_server(store=store, auth_secret=SECRET, **limits) as server:
        for user, count in (("small", SMALL), ("big", 300)):
            for number in range(count):
                await server.manager.create_session(
                    user, f"chat {number}", session_id=f"{user}-{number}"
                )
        small = [
            await in_thread(status_of, server.port, "/api/v1/sessions", make_token("small"))
            for _ in range(30)
        ]
        assert {status for status, _ in small} == {200}, small
        path, big = "/api/v1/sessions?title_contains=zzz&limit=1", []
        for _ in range(30):
            big.append(await in_thread(status_of, server.port, path, make_token("big")))
            if big[-1][0] != 200:
                break
        assert big[-1][0] == 429 and len(big) < 30, big
