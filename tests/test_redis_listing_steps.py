"""A Redis listing of a large candidate set, read in steps (list.lua, a few candidates
per call; persistence/redis/queries.py) on a real redis-server: the same sessions,
total and order as the in-memory index gives for the same metadata, over filters,
sorts and pages, with creation times shared by several sessions across the steps'
boundaries; and, when the listing changes between two steps, each session counted
once. A range of activity times is walked itself, up to a bound: a listing whose
sessions are touched between its steps ends, and holds each of them."""

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
from bamboo_session.persistence.redis.queries import FIRST_STEP
from bamboo_session.protocol.models import Session, SessionState, utcnow
from tests.redis_listing_support import (
    SESSIONS,
    STEP,
    counting_calls,
    fill,
    index_of,
    matches_of,
)
from tests.redis_server import RedisServer, prefix_for


@pytest.fixture
async def store(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    storage = cast(RedisStorage, await open_storage(redis_server.url(prefix=prefix_for(tmp_path))))
    try:
        yield storage
    finally:
        await storage.close()


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


async def test_sessions_touched_after_their_step_end_the_listing(store: RedisStorage) -> None:
    """Filtered and sorted by activity, with every session a step reads touched after
    it: each moves above the walk's bound and is read again (the values of its last
    reading count), in at most three phases of steps and a last call that reads the
    rest whole; a walk without a bound never ended."""
    first = await fill(store)
    store.list_step = STEP

    async def touch_what_was_read(reply: Any) -> None:
        if reply[0] == 1:
            for session_id in matches_of(reply)[::2]:
                await store.touch(session_id.decode())

    calls = counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        limit=100,
    )
    result = await store.list_sessions(query)
    # 20 steps to the bound, 16 for each of two phases of the 32 matches touched (the
    # others are not), and one call that reads those 32 whole.
    matching = SESSIONS - SESSIONS // 5
    assert len(calls) == SESSIONS // STEP + 2 * matching // STEP + 1
    assert len(matches_of(calls[-1])) // 2 == matching
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]
    assert result.total == expected.total == SESSIONS - SESSIONS // 5


async def test_sessions_touched_before_their_step_are_read(store: RedisStorage) -> None:
    """Every session not read yet is touched after each step, so it moves above the
    walk's bound before the walk gets to it, then above the next phase's: each is still
    read once (a session stays ahead of the cursor until read), and the listing ends."""
    first = await fill(store)
    store.list_step = STEP
    read: set[str] = set()

    async def touch_the_rest(reply: Any) -> None:
        read.update(item.decode() for item in matches_of(reply)[::2])
        if reply[0] == 1:
            for number in range(SESSIONS):
                if f"s{number:02d}" not in read:
                    await store.touch(f"s{number:02d}")

    calls = counting_calls(store, after=touch_the_rest)
    query = SessionFilter(active_after=first.metadata.created_at, title_contains="Chat", limit=100)
    result = await store.list_sessions(query)
    assert len(calls) <= 4 * SESSIONS // STEP
    ids = [m.id for m in result.sessions]
    assert len(ids) == len(set(ids)) == result.total == SESSIONS - SESSIONS // 5
    assert ids == [m.id for m in (await index_of(store)).query(query).sessions]


async def test_a_session_read_again_that_no_longer_matches_is_left_out(
    store: RedisStorage,
) -> None:
    """A session read, then made active and touched, is read again above the bound:
    no longer idle, it is out of a listing of idle sessions (its last reading counts).
    The range of activity asked (10 sessions) is smaller than the idle ones (13)."""
    await fill(store)
    mark = utcnow()
    for number in range(10):
        await store.touch(f"s{number:02d}")
    store.list_step = STEP
    changed: list[str] = []

    async def make_active(reply: Any) -> None:
        if not changed:
            changed.extend(item.decode() for item in matches_of(reply)[::2])
            for session_id in changed:
                await store.update_session_state(session_id, SessionState.ACTIVE)
                await store.touch(session_id)

    calls = counting_calls(store, after=make_active)
    query = SessionFilter(
        active_after=mark,
        state=SessionState.IDLE,
        limit=100,
    )
    result = await store.list_sessions(query)
    assert changed and len(calls) > 2
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]
    assert result.total == expected.total
    assert not {m.id for m in result.sessions} & set(changed)


async def test_a_few_active_among_many_take_a_call_per_step_of_them(
    store: RedisStorage,
) -> None:
    """300 sessions active since the time asked among 20,000, at a tenth of the scale
    (30 among 2,000, steps of 25): the range of activity is walked, 2 calls; through
    every session by creation time, it took 81 (97 ms of Redis where one call took 3)."""
    gate = asyncio.Semaphore(64)

    async def create(number: int) -> None:
        async with gate:
            await store.create_session(Session.new(f"r{number:04d}", title=f"Chat {number}"))

    await asyncio.gather(*(create(number) for number in range(2000)))
    mark = utcnow()
    await asyncio.sleep(0.002)
    for number in range(30):
        await store.touch(f"r{number * 7:04d}")
    calls = counting_calls(store)
    for query in (
        SessionFilter(active_after=mark, title_contains="Chat", limit=10),
        SessionFilter(active_after=mark, sort_by=SortBy.MESSAGE_COUNT, limit=10),
    ):
        store.list_step = 10**6
        whole = await store.list_sessions(query)
        store.list_step = 25
        calls.clear()
        stepped = await store.list_sessions(query)
        assert [m.id for m in stepped.sessions] == [m.id for m in whole.sessions]
        assert stepped.total == whole.total == 30
        assert len(calls) == 2


async def test_a_session_read_again_is_counted_once(store: RedisStorage) -> None:
    """A session deleted and created again (a later creation time) after its step is
    read again by a later step: it is listed once, where its last reading puts it."""
    await fill(store)
    store.list_step = STEP
    again: set[str] = set()

    async def create_again(reply: Any) -> None:
        for item in matches_of(reply)[::2] if reply[0] == 1 else []:
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
        if name == "list" and tuple(args[-len(FIRST_STEP) :]) != FIRST_STEP:
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
    matches = [len(matches_of(reply)) // 2 for reply in calls]
    assert matches == [STEP] * 6 + [0]
