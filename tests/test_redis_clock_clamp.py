"""The Redis store's writes never move a session's ``updated_at`` back: where the time
it holds is not behind Redis's clock (Redis's clock stepped back since, a failover went
to a replica whose clock is behind, an earlier instance's clock was ahead), an append,
a state move, a touch and a dead instance's park stamp it a microsecond past that time
(common.lua ``stamp_after``), as create.lua stamps a session made in place of an
expired one. They stamped Redis's ``TIME`` as read: the session went back behind
others in a listing by ``updated_at``, a reader that saw its time missed its next
change, and an event's ``ts`` came before the one it follows.

Redis's clock cannot be stepped back without root, so the sessions hold times ahead of
it instead, written as an earlier instance would have left them: through the store
(``import_metadata``) or with a raw ``HSET`` of the stored format. A real
redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence.base import SessionFilter, SortBy, SortOrder
from bamboo_session.persistence.presence import Park, Parked
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.micros import to_micros
from bamboo_session.protocol.models import AgentEvent, Session, SessionMetadata, SessionState
from tests.redis_server import RedisServer, redis_store

TICK = timedelta(microseconds=1)
TTL = 600


@pytest.fixture(name="storage")
async def storage_fixture(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    async with redis_store(redis_server, tmp_path) as storage:
        yield storage


async def redis_time(storage: RedisStorage) -> datetime:
    seconds, micros = await storage.redis.client.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


async def metadata_of(storage: RedisStorage, session_id: str) -> SessionMetadata:
    metadata = await storage.get_metadata(session_id)
    assert metadata is not None
    return metadata


async def held_ahead(
    storage: RedisStorage, session_id: str, ahead: timedelta, written_by: str = "import"
) -> SessionMetadata:
    """A session ``active`` whose ``updated_at`` and ``last_activity_at`` are ``ahead``
    of Redis's clock: imported so, or left so by an earlier instance's ``HSET``."""
    await storage.create_session(Session.new(session_id, ttl=TTL, now=storage.now()))
    await storage.update_session_state(session_id, SessionState.ACTIVE)
    metadata = await metadata_of(storage, session_id)
    moment = await redis_time(storage) + ahead
    if written_by == "import":
        metadata.updated_at = metadata.last_activity_at = moment
        metadata.expires_at = moment + timedelta(seconds=TTL)
        await storage.import_metadata(metadata)
    else:
        client, meta = storage.redis.client, storage.layout.meta(session_id)
        micros, expires = to_micros(moment), to_micros(moment + timedelta(seconds=TTL))
        await client.hset(meta, mapping={"updated": micros, "active": micros, "expires": expires})
        index = storage.layout.index
        for name, score in (("updated", micros), ("active", micros), ("expires", expires)):
            await client.zadd(f"{index}{name}", {session_id: score})
    held = await metadata_of(storage, session_id)
    assert held.updated_at == moment
    return held


async def by_updated_at(storage: RedisStorage) -> list[str]:
    listing = SessionFilter(sort_by=SortBy.UPDATED_AT, sort_order=SortOrder.DESC)
    return [found.id for found in (await storage.list_sessions(listing)).sessions]


@pytest.mark.parametrize("written_by", ["import", "hset"])
async def test_an_append_never_moves_a_session_updated_at_back(
    storage: RedisStorage, written_by: str
) -> None:
    await storage.create_session(Session.new("made_now", ttl=TTL, now=storage.now()))
    between = await held_ahead(storage, "between", timedelta(minutes=30))
    ahead = await held_ahead(storage, "ahead", timedelta(hours=1), written_by)
    assert await by_updated_at(storage) == ["ahead", "between", "made_now"]

    await storage.append_event("ahead", AgentEvent.token("x"))
    await storage.append_event("ahead", AgentEvent.token("y"))
    after = await metadata_of(storage, "ahead")
    first, second = (event.ts for event in await storage.read_events("ahead"))
    assert first == ahead.updated_at + TICK  # was Redis's TIME, an hour back
    assert second == first + TICK  # each change later than the one before
    assert after.updated_at == after.last_activity_at == second
    assert after.expires_at == second + timedelta(seconds=TTL)  # runs late, never early
    assert await by_updated_at(storage) == ["ahead", "between", "made_now"]
    assert between.updated_at < after.updated_at

    before = await redis_time(storage)  # a session not ahead: Redis's TIME, as before
    await storage.append_event("made_now", AgentEvent.token("z"))
    (plain,) = await storage.read_events("made_now")
    assert before <= plain.ts <= await redis_time(storage)


async def test_a_state_move_never_moves_a_session_updated_at_back(storage: RedisStorage) -> None:
    await held_ahead(storage, "between", timedelta(minutes=30))
    ahead = await held_ahead(storage, "ahead", timedelta(hours=1))
    idle = await storage.update_session_state("ahead", SessionState.IDLE)
    assert idle.updated_at == ahead.updated_at + TICK
    assert idle.last_activity_at == ahead.last_activity_at  # a state is no activity
    # A look's idle, fenced by the updated_at it read, still tells the writes apart.
    active = await storage.update_session_state(
        "ahead", SessionState.ACTIVE, unless_updated_since=ahead.updated_at
    )
    assert active.state == SessionState.IDLE and active.updated_at == idle.updated_at
    active = await storage.update_session_state("ahead", SessionState.ACTIVE)
    assert active.updated_at == idle.updated_at + TICK
    assert await by_updated_at(storage) == ["ahead", "between"]


async def test_a_touch_never_moves_a_session_updated_at_back(storage: RedisStorage) -> None:
    await held_ahead(storage, "between", timedelta(minutes=30))
    ahead = await held_ahead(storage, "ahead", timedelta(hours=1), "hset")
    await storage.touch("ahead")
    after = await metadata_of(storage, "ahead")
    assert after.updated_at == after.last_activity_at == ahead.updated_at + TICK
    assert after.expires_at == after.updated_at + timedelta(seconds=TTL)
    assert await by_updated_at(storage) == ["ahead", "between"]


async def test_a_dead_instance_park_never_moves_a_session_updated_at_back(
    storage: RedisStorage,
) -> None:
    """A survivor parks a session a dead instance left ``active`` (presence.lua)."""
    await held_ahead(storage, "between", timedelta(minutes=30))
    ahead = await held_ahead(storage, "ahead", timedelta(hours=1))
    [parked_one] = await storage.presence.park_many([Park("ahead", ahead.epoch)])
    assert parked_one == Parked(connections=0, wrote=True, state="disconnected")
    parked = await metadata_of(storage, "ahead")
    assert parked.state == SessionState.DISCONNECTED
    assert parked.updated_at == ahead.updated_at + TICK
    assert parked.last_activity_at == ahead.last_activity_at
    assert await by_updated_at(storage) == ["ahead", "between"]
