"""A Redis listing of a large candidate set, read in steps (list.lua, a few candidates
per call; persistence/redis/queries.py) on a real redis-server: the same sessions,
total and order as the in-memory index gives for the same metadata, over filters,
sorts and pages, with creation times shared by several sessions across the steps'
boundaries; and, when the listing changes between two steps, each session counted
once."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from bamboo_session.persistence import SessionFilter, SortBy, SortOrder, open_storage
from bamboo_session.persistence.index import SessionIndex
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import Message, Session, SessionState, utcnow
from tests.redis_server import RedisServer, prefix_for

SESSIONS = 40
STEP = 2  # candidates per call: some 20 calls for a listing of every session


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    storage = cast(RedisStorage, await open_storage(redis_server.url(prefix=prefix_for(tmp_path))))
    try:
        yield storage
    finally:
        await storage.close()


async def fill(store: RedisStorage) -> Session:
    """SESSIONS sessions of 4 users, three to a creation time (so ties straddle the
    steps), in three states, with 0 to 3 messages; returns the first."""
    base = utcnow() - timedelta(hours=1)
    first = None
    for i in range(SESSIONS):
        title = f"Chat {i}" if i % 5 else f"Other {i}"
        session = Session.new(f"s{(i * 7) % SESSIONS:02d}", user_id=f"u{i % 4}", title=title)
        session.metadata.touch(base + timedelta(microseconds=i // 3))
        session.metadata.created_at = base + timedelta(microseconds=i // 3)
        await store.create_session(session)
        first = first or session
        for _ in range(i % 4):
            await store.append_message(session.metadata.id, Message.user("m"))
        if i % 3 == 1:
            await store.update_session_state(session.metadata.id, SessionState.IDLE)
    assert first is not None
    return first


def filters(first: Session, count: int) -> list[SessionFilter]:
    created = first.metadata.created_at
    grid: Sequence[Sequence[Any]] = (
        (None, "u1"),
        (None, SessionState.ACTIVE, SessionState.IDLE),
        (None, "Chat", "Chat 1", "Other"),
        (None, created + timedelta(microseconds=4)),
        (None, created + timedelta(microseconds=9)),
        (None, created - timedelta(minutes=1), utcnow() + timedelta(hours=1)),
        tuple(SortBy),
        tuple(SortOrder),
        ((0, 100), (3, 4), (0, 0), (30, 100)),
    )
    combinations = list(itertools.product(*grid))
    chosen = random.Random(116).sample(combinations, count)
    chosen += [(None, None, "Chat", None, None, None, SortBy.CREATED_AT, SortOrder.DESC, (0, 100))]
    listed = []
    for user, state, title, after, before, active, sort_by, order, (offset, limit) in chosen:
        query = SessionFilter(user_id=user, state=state, title_contains=title)
        query.created_after, query.created_before, query.active_after = after, before, active
        query.sort_by, query.sort_order, query.offset, query.limit = sort_by, order, offset, limit
        listed.append(query)
    return listed


async def test_a_listing_in_steps_is_what_the_index_lists(store: RedisStorage) -> None:
    first = await fill(store)
    index = SessionIndex()
    for number in range(SESSIONS):
        metadata = await store.get_metadata(f"s{number:02d}")
        assert metadata is not None
        index.add(metadata)
    calls = counting_calls(store)
    for query in filters(first, 200):
        expected = index.query(query)
        for step in (STEP, 10**6):
            store.list_step = step
            calls.clear()
            result = await store.list_sessions(query)
            assert [m.id for m in result.sessions] == [m.id for m in expected.sessions], query
            assert (result.total, result.offset, result.limit) == (
                expected.total,
                expected.offset,
                expected.limit,
            ), query
    # The last query (a title alone) reads every session: one per step, or one call.
    for step, count in ((STEP, SESSIONS // STEP + 1), (10**6, 1)):
        store.list_step = step
        calls.clear()
        await store.list_sessions(query)
        assert len(calls) == count


async def test_sessions_that_move_between_steps_are_read_once(store: RedisStorage) -> None:
    """Filtered and sorted by activity, with every session a step reads touched after
    it: the steps go by creation time (the activity set, where a touched session moves
    ahead of the cursor, would read it again, and this listing would never end)."""
    first = await fill(store)
    store.list_step = STEP
    seen: list[str] = []

    async def touch_what_was_read(reply: Any) -> None:
        read = [item.decode() for item in reply[1 if reply[0] == 2 else 4 :: 2]]
        seen.extend(read)
        for session_id in read:
            await store.touch(session_id)

    calls = counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        limit=100,
    )
    result = await store.list_sessions(query)
    ids = [m.id for m in result.sessions]
    assert len(calls) == SESSIONS // STEP + 1
    assert sorted(seen) == sorted(ids)
    assert len(ids) == len(set(ids)) == result.total == SESSIONS - SESSIONS // 5


async def test_a_session_read_again_is_counted_once(store: RedisStorage) -> None:
    """A session deleted and created again (a later creation time) after its step is
    read again by a later step: it is listed once, where its last reading puts it."""
    await fill(store)
    store.list_step = STEP
    again: set[str] = set()

    async def create_again(reply: Any) -> None:
        for item in reply[4::2] if reply[0] == 1 else []:
            session_id = item.decode()
            if session_id not in again:
                again.add(session_id)
                metadata = await store.get_metadata(session_id)
                assert metadata is not None
                await store.delete_session(session_id)
                await store.create_session(Session.new(session_id, title=metadata.title))

    counting_calls(store, after=create_again)
    query = SessionFilter(title_contains="Chat", limit=100)
    result = await store.list_sessions(query)
    ids = [m.id for m in result.sessions]
    assert again and len(ids) == len(set(ids)) == result.total == SESSIONS - SESSIONS // 5
    created = [m.created_at for m in result.sessions]
    assert created == sorted(created, reverse=True)  # the new creation times, newest first


async def test_listings_in_steps_go_one_at_a_time(store: RedisStorage) -> None:
    """Listings in steps made at once are read one after the other, whole: interleaved,
    each took as long as all of them together (16 of 100,000 candidates each were all
    past the read deadline, where one call each served one), each holding its matches
    meanwhile."""
    await fill(store)
    store.list_step = STEP
    callers: list[asyncio.Task[Any] | None] = []  # the listing of each later step
    run = store.redis.run

    async def noted(name: str, keys: Any, args: Any) -> Any:
        if name == "list" and args[-3:] != ["", "", ""]:
            callers.append(asyncio.current_task())
        return await run(name, keys, args)

    store.redis.run = noted  # type: ignore[method-assign]
    query = SessionFilter(title_contains="Chat", limit=100)
    results = await asyncio.gather(*(store.list_sessions(query) for _ in range(4)))
    assert {result.total for result in results} == {SESSIONS - SESSIONS // 5}
    assert len(callers) == 4 * (SESSIONS // STEP)
    # Each listing's later steps in one run (its first is taken before anyone knows
    # that steps follow): a listing that takes turns with others shows up again.
    runs = [caller for caller, _ in itertools.groupby(callers)]
    assert len(runs) == len(set(runs)) == 4


async def test_a_step_reads_at_most_its_share_of_one_creation_time(
    store: RedisStorage,
) -> None:
    """Sessions sharing one creation time (an import's) are read a step's worth per
    call too: the rest of the cursor's score was read whole (20,000 sessions of one
    creation time: one call of 19,750 candidates, 86 ms; now 250 at most, 6.8 ms)."""
    at = utcnow()
    for number in range(12):
        session = Session.new(f"t{number:02d}", title=f"Chat {number}")
        session.metadata.created_at = at
        session.metadata.touch(at)
        await store.create_session(session)
    calls = counting_calls(store)
    query = SessionFilter(title_contains="Chat", limit=100)
    store.list_step = 10**6
    whole = await store.list_sessions(query)
    store.list_step = STEP
    calls.clear()
    stepped = await store.list_sessions(query)
    assert [m.id for m in stepped.sessions] == [m.id for m in whole.sessions]
    assert stepped.total == whole.total == 12
    matches = [len(reply[1:] if reply[0] == 2 else reply[4:]) // 2 for reply in calls]
    assert matches == [STEP] * 6 + [0]


def counting_calls(store: RedisStorage, after: Any = None) -> list[Any]:
    """The replies of the store's list.lua calls, as they come (``after`` is awaited
    with each, before the next call)."""
    calls: list[Any] = []
    run = store.redis.run

    async def counted(name: str, keys: Any, args: Any) -> Any:
        reply = await run(name, keys, args)
        if name == "list":
            calls.append(reply)
            if after is not None:
                await after(reply)
        return reply

    store.redis.run = counted  # type: ignore[method-assign]
    return calls
