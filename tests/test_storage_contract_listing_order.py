"""The storage contract's listing by creation time against the same listing worked out
by hand, on every backend of tests/storage_backends.py: pages, keyset positions, time
ranges and titles over sessions with equal creation times, as sessions come and go
(the memory and JSONL stores read it from a kept creation order, persistence/
created_order.py); and what a listing says it examined (``examined``: what the server
charges a listing for, server/http.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bamboo_session.persistence import ListPosition, SessionFilter, SortOrder, Storage
from bamboo_session.protocol.models import Session, SessionMetadata
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)

BASE = datetime(2026, 1, 1, tzinfo=UTC)


async def _create(store: Storage, number: int, user: str) -> SessionMetadata:
    # Three sessions to each second: equal creation times, ordered by id.
    created = BASE + timedelta(seconds=number // 3)
    metadata = SessionMetadata(
        id=f"s{number:03d}", user_id=user, title=f"chat {number}", created_at=created
    )
    await store.create_session(Session(metadata=metadata))
    stored = await store.get_metadata(metadata.id)
    assert stored is not None
    return stored


def _by_hand(sessions: list[SessionMetadata], query: SessionFilter) -> tuple[list[str], int]:
    def matches(m: SessionMetadata) -> bool:
        return (
            (query.user_id is None or m.user_id == query.user_id)
            and (query.created_after is None or m.created_at >= query.created_after)
            and (query.created_before is None or m.created_at < query.created_before)
            and (query.title_contains is None or query.title_contains in (m.title or ""))
        )

    descending = query.sort_order is SortOrder.DESC
    found = sorted(
        (m for m in sessions if matches(m)), key=lambda m: (m.created_at, m.id), reverse=descending
    )
    total = len(found)
    if query.after is not None:
        place = (query.after.key, query.after.id)
        found = [m for m in found if ((m.created_at, m.id) < place) == descending]
        found = [m for m in found if (m.created_at, m.id) != place]
    page = found[query.offset : query.offset + query.limit]
    return [m.id for m in page], total


def _queries(sessions: list[SessionMetadata]) -> list[SessionFilter]:
    middle = sessions[len(sessions) // 2]
    first, last = min(sessions, key=_place), max(sessions, key=_place)
    queries = []
    for order in (SortOrder.DESC, SortOrder.ASC):
        for user in (None, "u1", "u2", "nobody"):
            for title in (None, "1", "zzz"):
                base = {"user_id": user, "title_contains": title, "sort_order": order}
                queries += [
                    SessionFilter(**base, limit=1),
                    SessionFilter(**base, limit=7, offset=3),
                    SessionFilter(
                        **base, limit=5, after=ListPosition(middle.created_at, middle.id)
                    ),
                    SessionFilter(
                        **base,
                        limit=4,
                        created_after=BASE + timedelta(seconds=4),
                        created_before=BASE + timedelta(seconds=9),
                    ),
                ]
                # A keyset position outside the range of creation times asked for.
                queries += [
                    SessionFilter(
                        **base,
                        limit=4,
                        created_after=BASE + timedelta(seconds=4),
                        created_before=BASE + timedelta(seconds=9),
                        after=ListPosition(edge.created_at, edge.id),
                    )
                    for edge in (first, last)
                ]
    return queries


def _place(metadata: SessionMetadata) -> tuple[datetime, str]:
    return metadata.created_at, metadata.id


async def _agrees(store: Storage, sessions: list[SessionMetadata]) -> None:
    for query in _queries(sessions):
        result = await store.list_sessions(query)
        assert ([m.id for m in result.sessions], result.total) == _by_hand(sessions, query), query


async def test_a_listing_by_creation_time_is_the_one_worked_out_by_hand(store: Storage) -> None:
    sessions = [await _create(store, n, "u1" if n % 3 else "u2") for n in range(40)]
    await _agrees(store, sessions)
    # Sessions leaving and coming (the kept order is made again, or added to).
    for gone in ("s005", "s020", "s039"):
        await store.delete_session(gone)
    sessions = [m for m in sessions if m.id not in ("s005", "s020", "s039")]
    sessions += [await _create(store, n, "u1") for n in (5, 41, 42)]
    await _agrees(store, sessions)


async def test_a_listing_says_it_examined_the_sessions_its_filter_walked(store: Storage) -> None:
    """A title that matches none of a user's sessions: ``total`` is 0, yet every one of
    them was looked at, and ``examined`` says so."""
    for n in range(300):
        await _create(store, n, "u1" if n < 290 else "u2")
    result = await store.list_sessions(SessionFilter(user_id="u1", title_contains="zzz", limit=1))
    assert (result.sessions, result.total) == ([], 0)
    assert result.examined >= 290
    everyone = await store.list_sessions(SessionFilter(title_contains="zzz", limit=1))
    assert everyone.examined >= 300
