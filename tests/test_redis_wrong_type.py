"""A Redis append that meets one of its session's keys written over with another type
(from outside the store) writes nothing: Redis does not roll a script back, so
append.lua reads or first-writes each of the session's keys before any write that
counts. Before, the log took the event and then the history's RPUSH failed: the
session's seq never counted it, and once the key was set right every later append
was refused (its seq's entry was in the log already); a keyless append's trim of the
key window failed after the event was stored and counted, answered as failed (a
keyless append no longer writes the window at all); a keyed append recorded its key
for a seq the log then refused, and its retry was a "duplicate" of an event never
stored. Real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.base import StorageError
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Message, MessageEvent, Role, Session
from tests.redis_server import RedisServer, redis_store


@pytest.fixture(name="storage")
async def storage_fixture(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[RedisStorage]:
    async with redis_store(redis_server, tmp_path) as storage:
        yield storage


MESSAGE = MessageEvent(Message(Role.ASSISTANT, "hello"))  # into the history too
CASES = {
    "history, a message": ("msgs", MESSAGE, None),
    "key window, a keyed token": ("keys", AgentEvent.token("x"), "k"),
    "log, a keyed token": ("log", AgentEvent.token("x"), "k"),
}


@pytest.mark.parametrize(("name", "event", "key"), CASES.values(), ids=list(CASES))
async def test_an_append_over_a_key_of_another_type_writes_nothing(
    storage: RedisStorage, redis_server: RedisServer, name: str, event: object, key: str | None
) -> None:
    await storage.create_session(Session.new("s", now=storage.now()))
    assert (await storage.append_event("s", AgentEvent.token("first"))).seq == 1
    written_over = storage.layout.session("s") + name
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.set(written_over, "not what the store keeps there")
        with pytest.raises(StorageError, match="WRONGTYPE"):
            await storage.append_events("s", [(event, key)])  # type: ignore[list-item]
        assert await admin.hget(storage.layout.meta("s"), "seq") == b"1"
        if name != "log":
            assert await admin.xlen(storage.layout.log("s")) == 1  # nothing of it
        await admin.delete(written_over)  # the operator sets it right
    finally:
        await admin.aclose()
    appended = await storage.append_events("s", [(event, key)])  # type: ignore[list-item]
    assert [(done.seq, done.duplicate) for done in appended] == [(2, False)]
    stored = await storage.read_events("s", 0)
    assert [stored_event.seq for stored_event in stored] == ([2] if name == "log" else [1, 2])


async def test_a_keyless_append_is_stored_whole_over_a_key_window_of_another_type(
    storage: RedisStorage, redis_server: RedisServer
) -> None:
    """A keyless append writes nothing in the key window: stored and acknowledged once,
    where it used to be stored, counted, and then answered as failed by the trim."""
    await storage.create_session(Session.new("s", now=storage.now()))
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        await admin.set(storage.layout.session("s") + "keys", "not a sorted set")
        done = await storage.append_event("s", AgentEvent.token("x"))
        assert (done.seq, done.duplicate) == (1, False)
        assert await admin.hget(storage.layout.meta("s"), "seq") == b"1"
    finally:
        await admin.aclose()
    assert [event.seq for event in await storage.read_events("s", 0)] == [1]
