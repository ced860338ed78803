"""What a Redis listing in steps holds while it is read (persistence/redis/
listing_page.py), on a real redis-server: its page's candidates, not every match;
refused past ``list_bytes`` (HTTP 400, or 503 for a listing that changed while read),
its slot let go; and a reading again that leaves a hole in a cut-back page."""

from __future__ import annotations

import asyncio
import tracemalloc
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from bamboo_session.persistence import (
    ListingChangedTooLarge,
    ListingTooLarge,
    SessionFilter,
    SortBy,
    SortOrder,
    open_storage,
)
from bamboo_session.persistence.redis import RedisStorage, queries
from bamboo_session.persistence.redis.listing_page import ENTRY_BYTES, EveryMatch, PageKeeper
from bamboo_session.persistence.redis.queries import FIRST_STEP
from bamboo_session.protocol.models import Session
from bamboo_session.server.failures import failure_of
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


async def test_a_listing_holds_its_page_not_every_match(store: RedisStorage) -> None:
    """A page of 10 among 2,000 matches holds about what it holds among 1,111: the page's
    candidates, and 8 bytes per match (a hash of its id). Every match's id and sort key
    held, it grew by some 150 bytes per match (23.5 MiB at 100,000, bench/RESULTS.md)."""
    gate = asyncio.Semaphore(64)

    async def create(number: int) -> None:
        async with gate:
            await store.create_session(Session.new(f"m{number:05d}", title=f"Chat {number}"))

    await asyncio.gather(*(create(number) for number in range(2000)))
    store.list_step = 25
    peaks = {}
    for needle in ("Chat 1", "Chat"):  # 1,111 and 2,000 matches
        query = SessionFilter(title_contains=needle, sort_by=SortBy.UPDATED_AT, limit=10)
        await store.list_sessions(query)  # what a first listing allocates once
        # One listing's peak varied by 8 KB from call to call (293 to 301 KB, six calls
        # of one query: what the loop, the client and the GC held at that moment, and
        # which freed objects were reused unseen), as much as the 889 hashes between
        # the two: the least of three calls is what the listing itself needs.
        for _ in range(3):
            total, peak = await listing_peak(store, query)
            peaks[total] = min(peak, peaks.get(total, peak))
    assert set(peaks) == {1111, 2000}
    assert peaks[2000] - peaks[1111] < 889 * 40, peaks


async def listing_peak(store: RedisStorage, query: SessionFilter) -> tuple[int, int]:
    """How many sessions match ``query``, and the most memory its listing held."""
    tracemalloc.start()
    try:
        result = await store.list_sessions(query)
        return result.total, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_listing_past_its_bytes_is_refused(store: RedisStorage) -> None:
    """Its page's candidates past ``list_bytes`` (an offset of 25 among 32 matches, in
    steps of 2, with room for about 20): ListingTooLarge, which HTTP answers 400
    ``bad_request`` with what to do (asked again as it is, it fails the same way: a
    503 would have clients and proxies ask again), and lets go of the process's one
    slot for a listing in steps; the same listing with room is served."""
    await fill(store)
    store.list_step = STEP
    query = SessionFilter(title_contains="Chat", offset=25, limit=5, sort_by=SortBy.MESSAGE_COUNT)
    store.list_bytes = 20 * (ENTRY_BYTES + 3)
    for _ in range(2):
        with pytest.raises(ListingTooLarge, match="narrow its filter or ask for a smaller offset"):
            await store.list_sessions(query)
        assert not store.stepped_listing.locked()
    failure = failure_of(ListingTooLarge("x"))
    assert (failure.status, failure.error.value) == (400, "bad_request")
    store.list_bytes = 10**6
    expected = (await index_of(store)).query(query)
    result = await store.list_sessions(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]


async def test_a_listing_read_again_past_its_bytes_is_unavailable(store: RedisStorage) -> None:
    """The hole of the test below, with room for the page's candidates and the sessions
    read again (some 2,100 bytes) but not for every match (32 of 131 bytes): the
    reading again is refused, ListingChangedTooLarge, which HTTP answers 503
    ``internal`` (asked again while its sessions change less, the first reading
    serves it, as it does here), and lets go of the slot."""
    first = await fill(store)
    store.list_step = STEP
    store.list_bytes = 3000
    touched: set[bytes] = set()

    async def touch_what_was_read(reply: Any) -> None:
        if reply[0] == 1:
            for session_id in matches_of(reply)[::2]:
                if session_id not in touched and len(touched) < 6:
                    touched.add(session_id)
                    await store.touch(session_id.decode())

    run = store.redis.run
    counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        sort_order=SortOrder.ASC,
        limit=3,
    )
    with pytest.raises(ListingChangedTooLarge, match="changed while it was read"):
        await store.list_sessions(query)
    assert not store.stepped_listing.locked()
    failure = failure_of(ListingChangedTooLarge("x"))
    assert (failure.status, failure.error.value) == (503, "internal")
    store.redis.run = run  # type: ignore[method-assign]
    result = await store.list_sessions(query)
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]


async def test_a_reading_again_that_leaves_a_hole_in_the_page_reads_every_match(
    store: RedisStorage,
) -> None:
    """Sorted by activity, oldest first, a page of 3: each session a step reads is
    touched after it, so read again above the bound, no longer among the oldest. The
    page's candidates were cut back to the best 3 meanwhile: the listing is read again
    holding every match, and is what the index lists (the page cut back alone, its
    candidates replaced by their later readings, lists newer sessions than it should)."""
    first = await fill(store)
    store.list_step = STEP
    touched: set[bytes] = set()

    async def touch_what_was_read(reply: Any) -> None:
        if reply[0] == 1:
            for session_id in matches_of(reply)[::2]:
                if session_id not in touched and len(touched) < 6:
                    touched.add(session_id)
                    await store.touch(session_id.decode())

    calls = counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        sort_order=SortOrder.ASC,
        limit=3,
    )
    result = await store.list_sessions(query)
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]
    assert result.total == expected.total == SESSIONS - SESSIONS // 5
    assert len(touched) == 6 and len(calls) > 2 * (SESSIONS // STEP)  # read twice


async def test_a_listing_read_again_no_longer_holds_its_cut_back_page(
    store: RedisStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hole of the test above: while the listing is read again holding every match,
    the first reading's candidates are gone, so the two are never held at once (each
    is bounded by ``list_bytes``; held together, a listing could hold twice that: 1.7
    MiB of candidates beside 3.1 MiB of every match at 20,000 sessions, offset 5,000)."""
    first = await fill(store)
    store.list_step = STEP
    keepers: list[weakref.ref[PageKeeper]] = []
    alive_while_read_again: list[int] = []

    class NotedKeeper(PageKeeper):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            keepers.append(weakref.ref(self))

    class CheckedEveryMatch(EveryMatch):
        def add(self, matches: list[bytes]) -> None:
            alive_while_read_again.append(sum(ref() is not None for ref in keepers))
            super().add(matches)

    monkeypatch.setattr(queries, "PageKeeper", NotedKeeper)
    monkeypatch.setattr(queries, "EveryMatch", CheckedEveryMatch)
    touched: set[bytes] = set()

    async def touch_what_was_read(reply: Any) -> None:
        if reply[0] == 1 and not alive_while_read_again:
            for session_id in matches_of(reply)[::2]:
                if session_id not in touched and len(touched) < 6:
                    touched.add(session_id)
                    await store.touch(session_id.decode())

    counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        sort_order=SortOrder.ASC,
        limit=3,
    )
    result = await store.list_sessions(query)
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]
    assert len(keepers) == 1 and alive_while_read_again
    assert set(alive_while_read_again) == {0}


async def test_readings_again_that_stay_in_the_page_leave_no_hole(store: RedisStorage) -> None:
    """Sorted by activity, newest first (a dashboard's "recently active"), each session
    a step reads is touched after it: read again above the walk's bound, newer than any
    match cut back, so the page's candidates they replace are outranked anyway, and the
    listing is read once. It was read again holding every match: on a busy store of some
    100,000 matches, past list_bytes, a 503 however often it was asked."""
    first = await fill(store)
    store.list_step = STEP

    async def touch_what_was_read(reply: Any) -> None:
        if reply[0] == 1:
            for session_id in matches_of(reply)[::2]:
                await store.touch(session_id.decode())

    first_steps: list[Any] = []
    run = store.redis.run

    async def noted(name: str, keys: Any, args: Any) -> Any:
        if name == "list" and tuple(args[-len(FIRST_STEP) :]) == FIRST_STEP:
            first_steps.append(args)
        return await run(name, keys, args)

    store.redis.run = noted  # type: ignore[method-assign]
    counting_calls(store, after=touch_what_was_read)
    query = SessionFilter(
        active_after=first.metadata.created_at,
        title_contains="Chat",
        sort_by=SortBy.LAST_ACTIVITY_AT,
        limit=3,
    )
    result = await store.list_sessions(query)
    expected = (await index_of(store)).query(query)
    assert [m.id for m in result.sessions] == [m.id for m in expected.sessions]
    assert result.total == expected.total == SESSIONS - SESSIONS // 5
    assert len(first_steps) == 1
