"""What the tests of Redis listings in steps share (tests/test_redis_listing_steps.py,
tests/test_redis_listing_bounds.py): SESSIONS sessions whose creation times straddle
the steps' boundaries, the in-memory index of them, and the replies of the store's
list.lua calls as they come."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bamboo_session.persistence.index import SessionIndex
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.persistence.redis.queries import FIRST_STEP
from bamboo_session.protocol.models import Message, Session, SessionState, utcnow

SESSIONS = 40
STEP = 2  # candidates per call: some 20 calls for a listing of every session


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


def matches_of(reply: Any) -> Any:
    """The ids and sort keys a list.lua call found, flat (after the count of early ones,
    before the count of members read)."""
    return reply[2:-1] if reply[0] == 2 else reply[2 + len(FIRST_STEP) : -1]


async def index_of(store: RedisStorage) -> SessionIndex:
    """The in-memory index of fill's sessions as they are now."""
    index = SessionIndex()
    for number in range(SESSIONS):
        metadata = await store.get_metadata(f"s{number:02d}")
        assert metadata is not None
        index.add(metadata)
    return index


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
