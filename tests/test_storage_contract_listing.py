"""The storage contract's listing of sessions (persistence/base.py), on every backend
of tests/storage_backends.py: filters, sorts (equal sort keys ordered by id) and
pages.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from bamboo_session.persistence import SessionFilter, SortBy, SortOrder, Storage
from bamboo_session.protocol.models import Message, SessionState, utcnow
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session


async def test_list_sessions_filters_sorts_and_pages(store: Storage) -> None:
    for i in range(6):
        await new_session(store, f"s{i}", user_id="u1" if i % 2 else "u2", title=f"Chat {i}")
        await asyncio.sleep(0.002)
    await store.update_session_state("s3", SessionState.IDLE)
    result = await store.list_sessions(SessionFilter(user_id="u1"))
    assert [m.id for m in result.sessions] == ["s5", "s3", "s1"]
    assert result.total == 3
    result = await store.list_sessions(
        SessionFilter(sort_by=SortBy.CREATED_AT, sort_order=SortOrder.ASC, limit=2, offset=1)
    )
    assert [m.id for m in result.sessions] == ["s1", "s2"]
    assert (result.total, result.offset, result.limit) == (6, 1, 2)
    result = await store.list_sessions(SessionFilter(state=SessionState.IDLE))
    assert [m.id for m in result.sessions] == ["s3"]
    result = await store.list_sessions(SessionFilter(title_contains="Chat 4"))
    assert [m.id for m in result.sessions] == ["s4"]
    s2 = await store.get_metadata("s2")
    assert s2 is not None
    result = await store.list_sessions(
        SessionFilter(created_after=s2.created_at, sort_order=SortOrder.ASC)
    )
    assert [m.id for m in result.sessions] == ["s2", "s3", "s4", "s5"]
    result = await store.list_sessions(SessionFilter(created_before=s2.created_at))
    assert {m.id for m in result.sessions} == {"s0", "s1"}
    mine = await store.list_user_sessions("u2")
    assert [m.id for m in mine] == ["s4", "s2", "s0"]


async def test_list_sorts_by_message_count_and_activity(store: Storage) -> None:
    for name, count in (("a", 2), ("b", 0), ("c", 1)):
        await new_session(store, name)
        for _ in range(count):
            await store.append_message(name, Message.user("m"))
    result = await store.list_sessions(SessionFilter(sort_by=SortBy.MESSAGE_COUNT))
    assert [m.id for m in result.sessions] == ["a", "c", "b"]
    await asyncio.sleep(0.01)
    await store.touch("b")
    result = await store.list_sessions(SessionFilter(active_after=utcnow() - timedelta(seconds=5)))
    assert result.total == 3
    result = await store.list_sessions(SessionFilter(sort_by=SortBy.LAST_ACTIVITY_AT, limit=1))
    assert [m.id for m in result.sessions] == ["b"]


async def test_equal_sort_keys_are_ordered_by_id(store: Storage) -> None:
    for name in ("b", "a", "c"):
        await new_session(store, name)
    by_count = SessionFilter(sort_by=SortBy.MESSAGE_COUNT)
    result = await store.list_sessions(by_count)
    assert [m.id for m in result.sessions] == ["c", "b", "a"]
    by_count.sort_order = SortOrder.ASC
    by_count.limit, by_count.offset = 2, 1
    result = await store.list_sessions(by_count)
    assert [m.id for m in result.sessions] == ["b", "c"]


async def test_an_offset_far_past_the_end_is_an_empty_page(store: Storage) -> None:
    await new_session(store, "s0")
    for offset in (2**53 + 2, 2**63 - 1):
        result = await store.list_sessions(SessionFilter(offset=offset))
        assert (result.sessions, result.total, result.offset) == ([], 1, offset)


async def test_a_listing_of_no_sessions_is_a_count(store: Storage) -> None:
    """``limit=0``: how many match, and no page (server/store_stats.py and the
    per-user caps count so: the memory and JSONL stores then order nothing)."""
    for i in range(5):
        await new_session(store, f"s{i}", user_id="u1" if i < 3 else "u2", title=f"Chat {i}")
    await store.update_session_state("s1", SessionState.CLOSED)
    for query, total in (
        (SessionFilter(limit=0), 5),
        (SessionFilter(user_id="u1", limit=0), 3),
        (SessionFilter(user_id="u1", state=SessionState.CLOSED, limit=0), 1),
        (SessionFilter(title_contains="Chat 4", limit=0), 1),
        (SessionFilter(user_id="nobody", limit=0), 0),
    ):
        result = await store.list_sessions(query)
        assert (result.sessions, result.total, result.limit) == ([], total, 0), query
