"""The Redis backend's listing and import: list_sessions gives what the in-memory
index gives for the same sessions and queries, and a session imported (SessionImport)
is held as the store it came from holds it."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from bamboo_session.persistence import (
    Appended,
    MemoryStorage,
    SessionFilter,
    SortBy,
    SortOrder,
    Storage,
    open_storage,
)
from bamboo_session.persistence.importing import SessionImport
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState
from tests.redis_storage_support import (
    collect,
    url_fixture,  # noqa: F401 (a fixture)
)

# -- list_sessions against the in-memory index -------------------------------------------------


async def test_list_sessions_matches_the_memory_index(url: Callable[..., str]) -> None:
    chance = random.Random(12)
    redis_store = await open_storage(url())
    memory = await MemoryStorage.open()
    stores: list[Storage] = [redis_store, memory]
    try:
        for i in range(30):
            session = Session.new(
                f"s{i:02d}", user_id=chance.choice(["u1", "u2", "u3", None]), title=f"T{i % 7}"
            )
            for store in stores:
                await store.create_session(Session(session.metadata, []))
            for _ in range(chance.randrange(3)):
                for store in stores:
                    await store.append_message(session.id, Message.user("m"))
            if chance.random() < 0.3:
                for store in stores:
                    await store.update_session_state(session.id, SessionState.IDLE)
        for _ in range(150):
            pivot = f"s{chance.randrange(30):02d}"
            user = chance.choice([None, "u1", "u2", "nobody"])
            state = chance.choice([None, SessionState.IDLE, SessionState.ACTIVE])
            bounds = [chance.random() < 0.3 for _ in range(3)]
            title = chance.choice([None, "T3", "T"])
            sort_by, order = chance.choice(list(SortBy)), chance.choice(list(SortOrder))
            limit, offset = chance.choice([0, 3, 100]), chance.choice([0, 2])
            results = []
            for store in stores:  # the same query, its times taken from each store
                meta = await store.get_metadata(pivot)
                assert meta is not None
                query = SessionFilter(
                    user_id=user,
                    state=state,
                    created_after=meta.created_at if bounds[0] else None,
                    created_before=meta.created_at if bounds[1] else None,
                    active_after=meta.last_activity_at if bounds[2] else None,
                    title_contains=title,
                    sort_by=sort_by,
                    sort_order=order,
                    limit=limit,
                    offset=offset,
                )
                result = await store.list_sessions(query)
                results.append((result.total, [m.id for m in result.sessions]))
            assert results[0] == results[1], query
    finally:
        await redis_store.close()
        await memory.close()


# -- import (SessionImport) -------------------------------------------------------------------


async def test_a_session_is_imported_as_another_store_holds_it(url: Callable[..., str]) -> None:
    source = await MemoryStorage.open()
    target = await open_storage(url())
    try:
        assert isinstance(target, SessionImport)
        original = Session.new("s1", user_id="u", title="T", ttl=3600, extra={"k": 1})
        await source.create_session(original)
        await source.append_message("s1", Message.user("hi"), "m1")
        await source.append_events(
            "s1", [(AgentEvent.token("a"), "k1"), (AgentEvent.token("b"), None)]
        )
        await source.update_session_state("s1", SessionState.IDLE)
        meta = await source.get_metadata("s1")
        events = await source.read_events("s1")
        assert meta is not None

        await target.create_session(Session(original.metadata, []))
        watcher = await target.subscribe("s1", 0)
        with pytest.raises(ValueError, match="seq"):
            await target.import_events("s1", events[1:])
        await target.import_events("s1", events[:1])
        await target.import_events("s1", events[1:])
        await target.import_metadata(meta)

        assert await target.read_events("s1") == events
        assert await collect(watcher, 3) == [1, 2, 3]
        assert [m.content for m in await target.get_session_history("s1")] == ["hi"]
        assert await target.append_event("s1", AgentEvent.token("a"), "k1") == Appended(2, True)
        imported = await target.get_metadata("s1")
        assert imported is not None
        assert (imported.state, imported.ttl, imported.extra, imported.epoch) == (
            SessionState.IDLE,
            3600,
            {"k": 1},
            meta.epoch,
        )
        assert (imported.expires_at, imported.last_activity_at, imported.created_at) == (
            meta.expires_at,
            meta.last_activity_at,
            meta.created_at,
        )
        assert (imported.last_seq, imported.message_count) == (3, 1)
        idle = await target.list_sessions(SessionFilter(state=SessionState.IDLE))
        assert [m.id for m in idle.sessions] == ["s1"]
        assert (await target.list_sessions(SessionFilter(state=SessionState.ACTIVE))).total == 0
    finally:
        await source.close()
        await target.close()
