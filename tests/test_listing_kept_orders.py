"""What the memory and JSONL stores keep for listings by creation time (persistence/
created_order.py, kept by persistence/index.py) stays bounded by the sessions they
hold: a listing of a user who has no session (a peer without auth may ask for any
``user_id``; with auth every user whose sessions all ended) keeps nothing behind."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import pytest

from bamboo_session.persistence import SessionFilter
from bamboo_session.protocol.models import Session, SessionMetadata
from tests.storage_backends import BACKENDS, Backend

LISTINGS = 5_000
# Each listing of an unknown user kept an empty order, its key and the user's id:
# about 300 bytes (1.5 MB for these); what a listing leaves behind is a few hundred
# bytes in all (a cache's warm-up, the allocator's free lists).
MOST_KEPT = 256 * 1024
SESSIONS = 300


@pytest.mark.parametrize(
    "backend", [b for b in BACKENDS if b.name in ("memory", "jsonl")], ids=lambda b: b.name
)
async def test_listings_of_users_without_sessions_keep_no_memory(
    backend: Backend, tmp_path: Path
) -> None:
    store = await backend.open(tmp_path)
    try:
        gone = SessionMetadata(id="gone", user_id="leaver")
        await store.create_session(Session(metadata=SessionMetadata(id="kept", user_id="stays")))
        await store.create_session(Session(metadata=gone))
        await store.list_sessions(SessionFilter(user_id="leaver", limit=10))
        await store.delete_session("gone")  # the leaver's sessions all ended
        await store.list_sessions(SessionFilter(user_id="stays", limit=10))  # a warm-up
        await store.list_sessions(SessionFilter(user_id="nobody-warm", limit=10))
        gc.collect()
        tracemalloc.start()
        try:
            before, _ = tracemalloc.get_traced_memory()
            for number in range(LISTINGS):
                found = await store.list_sessions(
                    SessionFilter(user_id=f"nobody-{number:06d}", limit=10)
                )
                assert found.sessions == [] and found.total == 0
            found = await store.list_sessions(SessionFilter(user_id="leaver", limit=10))
            assert found.sessions == []
            gc.collect()
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert after - before < MOST_KEPT, f"{after - before} bytes kept by {LISTINGS} listings"
        listed = await store.list_sessions(SessionFilter(user_id="stays", limit=10))
        assert [m.id for m in listed.sessions] == ["kept"]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "backend", [b for b in BACKENDS if b.name in ("memory", "jsonl")], ids=lambda b: b.name
)
async def test_a_listing_that_orders_its_sessions_anew_says_it_examined_them(
    backend: Backend, tmp_path: Path
) -> None:
    """``?limit=1`` read off a kept order examines a page's worth; the listing that
    made the order (the first, or the first after a session of it left) ordered every
    session of its source, and ``examined``, what the server charges a listing for,
    says so (made again after a leave, it cost about ten times a title that matches
    none of them, which is charged for every one)."""
    store = await backend.open(tmp_path)
    try:
        for number in range(SESSIONS):
            metadata = SessionMetadata(id=f"s{number:04d}", user_id="u", title=f"chat {number}")
            await store.create_session(Session(metadata=metadata))
        newest = SessionFilter(user_id="u", limit=1)
        made = await store.list_sessions(newest)
        kept = await store.list_sessions(newest)
        assert made.sessions == kept.sessions and made.total == SESSIONS
        assert made.examined >= SESSIONS
        assert kept.examined <= 2
        await store.delete_session("s0000")
        for query in (newest, SessionFilter(limit=1)):  # the user's order, and everyone's
            again = await store.list_sessions(query)
            assert again.examined >= SESSIONS - 1
            assert (await store.list_sessions(query)).examined <= 2
    finally:
        await store.close()
