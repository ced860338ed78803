"""The storage contract's listing in every order against a plain ``sorted()`` of the
same sessions, on every backend of tests/storage_backends.py: random sessions with
many equal sort keys (ordered by id), random filters (user, state, title, times),
pages (limit, offset) and keyset positions, by creation, update, activity and message
count, both ways. The memory and JSONL stores take a small page of many matches with
a heap (persistence/index.py), by creation time off a kept order: what they answer
must be what a full sort would have, page for page and cursor for cursor."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from bamboo_session.persistence import ListPosition, SessionFilter, SortBy, SortOrder, Storage
from bamboo_session.protocol.models import (
    AgentEvent,
    Message,
    Session,
    SessionMetadata,
    SessionState,
)
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)

BASE = datetime(2026, 1, 1, tzinfo=UTC)
SESSIONS = 90
QUERIES = 400
USERS = ("u1", "u2", "u3")
WORDS = ("alpha", "beta", "gamma", "delta")


async def _seed(store: Storage, rng: random.Random) -> list[SessionMetadata]:
    """Random sessions, their times on a coarse grid (equal keys galore); some with
    messages (a count, and activity now), some moved to another state."""
    ids = []
    for number in range(SESSIONS):
        created = BASE + timedelta(seconds=rng.randrange(12))
        metadata = SessionMetadata(
            id=f"s{rng.randrange(10**6):06d}-{number}",
            user_id=rng.choice(USERS),
            title=None if rng.random() < 0.1 else f"{rng.choice(WORDS)} {number}",
            created_at=created,
            updated_at=created + timedelta(seconds=rng.randrange(4)),
            last_activity_at=created + timedelta(seconds=rng.randrange(6)),
        )
        await store.create_session(Session(metadata=metadata))
        messages = rng.choice((0, 0, 1, 2, 3))
        if messages:
            events = [(AgentEvent.message(Message.user(f"m{n}")), None) for n in range(messages)]
            await store.append_events(metadata.id, events)
        if rng.random() < 0.3:
            await store.update_session_state(metadata.id, SessionState.IDLE)
        ids.append(metadata.id)
    stored = [await store.get_metadata(session_id) for session_id in ids]
    assert all(m is not None for m in stored)
    return [m for m in stored if m is not None]


def _key(metadata: SessionMetadata, sort_by: SortBy) -> tuple[datetime | int, str]:
    return getattr(metadata, sort_by.value), metadata.id


def _matches(metadata: SessionMetadata, query: SessionFilter) -> bool:
    return (
        (query.user_id is None or metadata.user_id == query.user_id)
        and (query.state is None or metadata.state == query.state)
        and (query.created_after is None or metadata.created_at >= query.created_after)
        and (query.created_before is None or metadata.created_at < query.created_before)
        and (query.active_after is None or metadata.last_activity_at >= query.active_after)
        and (
            query.title_contains is None
            or (metadata.title is not None and query.title_contains in metadata.title)
        )
    )


def _by_sorting(sessions: list[SessionMetadata], query: SessionFilter) -> tuple[list[str], int]:
    """The page and the total, the plain way: every match sorted."""
    descending = query.sort_order is SortOrder.DESC
    found = sorted(
        (m for m in sessions if _matches(m, query)),
        key=lambda m: _key(m, query.sort_by),
        reverse=descending,
    )
    total = len(found)
    if query.after is not None:
        place = (query.after.key, query.after.id)
        if descending:
            found = [m for m in found if _key(m, query.sort_by) < place]
        else:
            found = [m for m in found if _key(m, query.sort_by) > place]
    page = found[query.offset : query.offset + query.limit]
    return [m.id for m in page], total


def _position(sessions: list[SessionMetadata], sort_by: SortBy, rng: random.Random) -> ListPosition:
    """A keyset position: a session's own, or a key with an id before or after every
    id (a place between sessions, as a cursor of a session since gone is)."""
    key, session_id = _key(rng.choice(sessions), sort_by)
    return ListPosition(key, rng.choice((session_id, "", "~")))


def _query(sessions: list[SessionMetadata], rng: random.Random) -> SessionFilter:
    sort_by = rng.choice(list(SortBy))
    moment = BASE + timedelta(seconds=rng.randrange(12))
    return SessionFilter(
        user_id=rng.choice((None, None, *USERS, "nobody")),
        state=rng.choice((None, None, None, SessionState.IDLE, SessionState.ACTIVE)),
        title_contains=rng.choice((None, None, None, "a", "gamma", "zzz")),
        created_after=rng.choice((None, None, None, moment)),
        created_before=rng.choice((None, None, None, moment + timedelta(seconds=5))),
        active_after=rng.choice((None, None, None, moment)),
        limit=rng.choice((1, 2, 3, 5, 10, 40, 1000)),
        offset=rng.choice((0, 0, 0, 1, 4, 30)),
        sort_by=sort_by,
        sort_order=rng.choice(list(SortOrder)),
        after=rng.choice((None, None, _position(sessions, sort_by, rng))),
    )


async def test_every_order_and_filter_gives_what_a_full_sort_gives(store: Storage) -> None:
    rng = random.Random(494)
    sessions = await _seed(store, rng)
    for _ in range(QUERIES):
        query = _query(sessions, rng)
        result = await store.list_sessions(query)
        assert ([m.id for m in result.sessions], result.total) == _by_sorting(sessions, query), (
            query
        )
        assert result.examined >= len(result.sessions), query


async def test_pages_by_cursor_walk_the_full_sort_once(store: Storage) -> None:
    """Each order walked page by page from the cursor of each page's last session: the
    pages, end to end, are the full sort, each session once."""
    rng = random.Random(4940)
    sessions = await _seed(store, rng)
    for sort_by in SortBy:
        for sort_order in SortOrder:
            for user_id in (None, "u2"):
                query = SessionFilter(user_id=user_id, sort_by=sort_by, sort_order=sort_order)
                everything, total = _by_sorting(sessions, query)
                walked: list[str] = []
                query.limit = 7
                while True:
                    page = await store.list_sessions(query)
                    assert page.total == total
                    walked += [m.id for m in page.sessions]
                    if len(page.sessions) < query.limit:
                        break
                    last = page.sessions[-1]
                    query.after = ListPosition(getattr(last, sort_by.value), last.id)
                assert walked == everything, (sort_by, sort_order, user_id)


async def test_a_listing_in_any_order_says_it_examined_what_its_filter_walked(
    store: Storage,
) -> None:
    """A title that matches none of a user's sessions, in each order: ``total`` is 0,
    yet every one of them was looked at, and ``examined`` (what a listing is charged
    for, server/http_pages.py) says so."""
    for number in range(300):
        metadata = SessionMetadata(
            id=f"s{number:03d}", user_id="u1" if number < 290 else "u2", title=f"chat {number}"
        )
        await store.create_session(Session(metadata=metadata))
    for sort_by in SortBy:
        for user_id, walked in (("u1", 290), (None, 300)):
            query = SessionFilter(user_id=user_id, title_contains="zzz", limit=1, sort_by=sort_by)
            result = await store.list_sessions(query)
            assert (result.sessions, result.total) == ([], 0)
            assert result.examined >= walked, (sort_by, user_id, result.examined)
