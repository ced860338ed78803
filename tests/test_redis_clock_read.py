"""The Redis store's reading of Redis's clock (persistence/redis/clock.py) is taken at
the middle of its round trip: one held up by a busy Redis (a slow script, a fork, a
``CLIENT PAUSE``) was off by half of it, and until the next reading 10 s later the
server's sessions were judged, and made, by a clock that far from Redis's. After a
reading held up 1.5 s, a session the server made was stamped 0.75 s ahead of Redis's
clock: its ``created_at`` came 0.74 s after its first event's ``ts``, and its
``updated_at`` moved back at the attach's write. Such a reading is not taken now; the
last one stands. A real redis-server, a real server on the store.

A new session's times are Redis's ``TIME`` taken by the create script itself, not its
creator's reading of Redis's clock: within a second of Redis's (half a round trip
off, or a reading held up), they were kept as the creator gave them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.base import SessionExpired, SessionFilter, SortBy
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach


async def test_a_reading_of_redis_clock_held_up_by_a_busy_redis_is_not_taken(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, default_ttl=3600, cleanup_interval=None)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.execute_command("CLIENT", "PAUSE", 1500, "ALL")
        await storage.clock.read()  # the store's reading every 10 s, as Redis is held up
        config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
        async with (
            BambooServer(config, storage) as server,
            attach(server, "s", create=True) as (peer, _),
        ):
            await peer.send({"type": "event", "id": 1, "event": {"type": "token", "content": "x"}})
            assert await peer.recv() == {"type": "ack", "id": 1, "seq": 1}
        metadata = await storage.get_metadata("s")
        assert metadata is not None
        event = (await storage.read_events("s"))[-1]
        assert metadata.created_at <= event.ts  # made before its first event, by Redis's clock
        assert metadata.created_at <= metadata.updated_at
    finally:
        await admin.aclose()
        await storage.close()


async def redis_time(admin: redis.asyncio.Redis) -> datetime:
    seconds, micros = await admin.time()
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)


async def test_a_new_session_is_stamped_with_redis_time_not_the_instance_reading(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The instance's reading of Redis's clock 0.6 s behind (a reading taken across a
    slow round trip would be half of it off): a session it makes is stamped by Redis
    all the same, its TTL from then, and its first event is not before it."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, cleanup_interval=None)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        assert storage.clock._offset is not None  # read at the open
        storage.clock._offset -= 0.6  # the seam: this instance's reading, made wrong
        storage.clock._wall_offset -= 0.6  # (carried by either local clock)
        assert await redis_time(admin) - storage.now() > timedelta(seconds=0.5)
        before = await redis_time(admin)
        await storage.create_session(Session.new("s", ttl=600, now=storage.now()))
        after = await redis_time(admin)
        metadata = await storage.get_metadata("s")
        assert metadata is not None
        assert before <= metadata.created_at <= after  # Redis's TIME, taken in the script
        assert metadata.created_at == metadata.updated_at == metadata.last_activity_at
        assert metadata.expires_at == metadata.created_at + timedelta(seconds=600)
        listed = await storage.list_sessions(SessionFilter(sort_by=SortBy.CREATED_AT))
        assert [found.created_at for found in listed.sessions] == [metadata.created_at]
    finally:
        await admin.aclose()
        await storage.close()


async def test_a_session_made_expired_stays_expired_at_redis_time(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Its times move to Redis's together: the creator's ``expires_at`` before its
    ``updated_at`` stays so (tests make expired sessions this way)."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, cleanup_interval=None)
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        session = Session.new("gone", ttl=60, now=storage.now())
        session.metadata.expires_at = session.metadata.updated_at - timedelta(seconds=1)
        await storage.create_session(session)
        metadata = await storage.get_metadata("gone")
        assert metadata is not None and metadata.expires_at is not None
        assert metadata.expires_at == metadata.updated_at - timedelta(seconds=1)
        assert metadata.expires_at < await redis_time(admin)
        with pytest.raises(SessionExpired):
            await storage.append_event("gone", AgentEvent.token("x"))
    finally:
        await admin.aclose()
        await storage.close()


async def test_a_session_made_in_place_of_an_expired_one_is_not_stamped_behind_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The expired session's ``updated_at`` an hour ahead of Redis's clock (Redis's
    clock stepped back since): the new one under its id is stamped just past it, so
    that a reader's ``updated_since`` cursor that saw the old one sees the new one."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    storage = await open_storage(url, cleanup_interval=None)
    try:
        await storage.create_session(Session.new("s", ttl=60, now=storage.now()))
        old = await storage.get_metadata("s")
        assert old is not None
        old.state = SessionState.EXPIRED
        old.updated_at = storage.now() + timedelta(hours=1)
        await storage.import_metadata(old)
        session = Session.new("s", ttl=60, now=storage.now())
        await storage.create_session(session, replace_expired=True)
        new = await storage.get_metadata("s")
        assert new is not None and new.epoch != old.epoch
        assert new.updated_at == old.updated_at + timedelta(microseconds=1)
        assert new.created_at == new.last_activity_at == new.updated_at
    finally:
        await storage.close()
