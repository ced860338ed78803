"""A Redis listing that starts after a keyset position (``SessionFilter.after``, what
the HTTP ``cursor`` becomes) on a real redis-server: the same page and total as the
in-memory index gives for the same metadata, over filters, sorts and positions (a
session's own place, one between two ids of a shared sort key, one before or after
everything), on each of list.lua's ways: read straight off a sorted set by rank, read
and sorted in one call, and read in steps."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from bamboo_session.persistence import ListPosition, SessionFilter, SortBy, SortOrder, open_storage
from bamboo_session.persistence.index import SessionIndex
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import SessionMetadata, SessionState
from tests.redis_listing_support import STEP, fill, index_of
from tests.redis_server import RedisServer, prefix_for
from tests.test_redis_listing_steps import filters


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    storage = cast(RedisStorage, await open_storage(redis_server.url(prefix=prefix_for(tmp_path))))
    try:
        yield storage
    finally:
        await storage.close()


def positions(index: SessionIndex, query: SessionFilter, rng: random.Random) -> list[ListPosition]:
    """Places to start after: some sessions' own, and places between and beyond them."""
    whole = index.query(SessionFilter(**{**_terms(query), "offset": 0, "limit": 10**6}))
    chosen: list[ListPosition] = []
    for metadata in rng.sample(whole.sessions, min(3, len(whole.sessions))):
        key = _key(metadata, query.sort_by)
        chosen.append(ListPosition(key, metadata.id))
        chosen.append(ListPosition(key, metadata.id + "a"))  # between two ids
        chosen.append(ListPosition(key, metadata.id[:-1]))
    if query.sort_by is SortBy.MESSAGE_COUNT:
        chosen += [ListPosition(0, ""), ListPosition(10**6, "zzz")]
    else:
        some = whole.sessions[0].created_at if whole.sessions else None
        if some is not None:
            chosen += [ListPosition(some - timedelta(days=1), "a")]
            chosen += [ListPosition(some + timedelta(days=1), "a")]
    return chosen


def _terms(query: SessionFilter) -> dict[str, object]:
    return {name: getattr(query, name) for name in query.__struct_fields__ if name != "after"}


def _key(metadata: SessionMetadata, sort_by: SortBy) -> object:
    return getattr(metadata, sort_by.value)


async def test_a_page_after_a_position_is_what_the_index_lists(store: RedisStorage) -> None:
    first = await fill(store)
    index = await index_of(store)
    rng = random.Random(398)
    checked = 0
    # Read straight off a sorted set: each sort set alone, one user's or state's sessions
    # by creation time, a range of creation times.
    straight = [
        SessionFilter(sort_by=sort_by, sort_order=order, offset=offset, limit=limit)
        for sort_by in SortBy
        for order in SortOrder
        for offset, limit in ((0, 5), (2, 3), (0, 100))
    ]
    straight += [
        SessionFilter(user_id="u1", sort_order=SortOrder.ASC, limit=4),
        SessionFilter(user_id="u2", limit=4),
        SessionFilter(state=SessionState.IDLE, sort_order=SortOrder.ASC, limit=3),
        SessionFilter(
            created_after=first.metadata.created_at + timedelta(microseconds=3),
            created_before=first.metadata.created_at + timedelta(microseconds=9),
            limit=4,
        ),
        SessionFilter(
            created_after=first.metadata.created_at + timedelta(microseconds=3),
            created_before=first.metadata.created_at + timedelta(microseconds=9),
            sort_order=SortOrder.ASC,
            limit=4,
        ),
    ]
    for query in straight + filters(first, 60):
        for position in positions(index, query, rng):
            keyed = SessionFilter(**_terms(query), after=position)  # type: ignore[arg-type]
            expected = index.query(keyed)
            for step in (STEP, 10**6):
                store.list_step = step
                result = await store.list_sessions(keyed)
                assert [m.id for m in result.sessions] == [m.id for m in expected.sessions], (
                    keyed,
                    step,
                )
                assert result.total == expected.total, (keyed, step)
                checked += 1
    assert checked > 300
