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
