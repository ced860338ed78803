"""A store's close called again while the first call is still closing, on every backend
of the contract suite (real files, a real Redis): the second call returns only once the
first has ended, so that whoever awaited it may reopen the store at once (its lock
released, the JSONL index snapshot written); and it returns normally when the first is
cancelled midway (the JSONL close, held by a delete at its directory sync; the Redis
close, its connections closed all the same); a caller cancelled during the first
close hears it (the SQLite close took its cancellation for its cleanup task's)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, open_storage
from bamboo_session.persistence.sqlite import SqliteStorage, SqliteStorageConfig
from bamboo_session.protocol.models import AgentEvent, Session
from tests.held_delete_support import held_directory_sync
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture  # noqa: F401 (the fixture)
from tests.storage_contract_support import new_session, tokens
from tests.test_jsonl_writeback_errors import store_files_open
from tests.test_jsonl_writeback_errors import tokens as tokens_of


async def test_a_second_close_returns_once_the_first_has_ended(
    backend: Backend, tmp_path: Path
) -> None:
    """Two closes at once: when the second returns the first has ended, and the store
    opens again at once with what it held (the lock free)."""
    store = await backend.open(tmp_path)
    await new_session(store)
    await store.append_events("s1", tokens("a", "b"))
    first = asyncio.create_task(store.close())
    second = asyncio.create_task(store.close())
    await second
    assert first.done()
    await first
    reopened = await backend.open(tmp_path)
    try:
        if backend.durable:
            assert [e.event for e in await reopened.read_events("s1")] == [
                AgentEvent.token("a"),
                AgentEvent.token("b"),
            ]
    finally:
        await reopened.close()
    await store.close()  # and once more, after the end: at once


@pytest.mark.parametrize("first_cancelled", [False, True])
async def test_a_jsonl_close_waits_for_the_first_held_by_a_delete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first_cancelled: bool
) -> None:
    """The first close waits for a delete held at its directory sync, the second for
    the first. Whether the first ends or is cancelled there, the second returns
    normally only once the first has ended: the writer closed, the lock released (and,
    not cancelled, the index snapshot written), the delete ended, the store whole."""
    config = JsonlStorageConfig(tmp_path)
    storage = await JsonlStorage.open(config)
    for session_id in ("a", "b"):
        await storage.create_session(Session.new(session_id))
        await storage.append_event(session_id, AgentEvent.token(session_id))
    started, release = held_directory_sync(monkeypatch, config.layout.sessions, fails=False)
    deleting = asyncio.create_task(storage.delete_session("b"))
    assert await asyncio.to_thread(started.wait, 10)
    first = asyncio.create_task(storage.close())
    second = asyncio.create_task(storage.close())
    for _ in range(3):  # the first starts, and waits for the delete; the second for it
        await asyncio.sleep(0)
    assert not second.done()
    if first_cancelled:
        first.cancel()
    release.set()
    await second  # normally, whatever the first's outcome
    assert first.done() and first.cancelled() == first_cancelled
    assert store_files_open(config) == 0
    assert config.layout.snapshot.exists() != first_cancelled
    await asyncio.gather(deleting, return_exceptions=True)
    async with await JsonlStorage.open(config) as reopened:
        assert await tokens_of(reopened, "a") == [AgentEvent.token("a")]


async def test_a_redis_close_cancelled_midway_closes_its_connections(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The first close cancelled as it stops its background work: the second returns
    once it has ended, and Redis no longer sees any connection of the store's (its
    listener's and its client's were left open)."""
    admin = redis.asyncio.Redis(port=redis_server.port)
    try:
        others = {client["id"] for client in await admin.client_list()}
        store = await open_storage(redis_server.url(prefix=prefix_for(tmp_path)))
        await new_session(store)
        await store.append_events("s1", tokens("a"))

        async def store_clients() -> set[str]:
            return {client["id"] for client in await admin.client_list()} - others

        async def none_left() -> bool:
            return not await store_clients()

        assert await store_clients()
        first = asyncio.create_task(store.close())
        await asyncio.sleep(0)  # under way, waiting for its background tasks to end
        first.cancel()
        await store.close()
        assert first.cancelled()
        await eventually(none_left)
    finally:
        await admin.aclose()


async def test_a_sqlite_close_cancelled_at_its_first_wait_is_cancelled_and_unlocks(
    tmp_path: Path,
) -> None:
    """The first close cancelled while it waits for its cleanup task to end: its caller
    gets CancelledError (it went on to close as if never cancelled), the second close
    returns once it has ended, and the store opens again at once (its lock released)."""
    config = SqliteStorageConfig(tmp_path / "store.db")
    store = await SqliteStorage.open(config)
    await new_session(store)
    await store.append_events("s1", tokens("a"))
    first = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # under way, waiting for the cleanup task it cancelled
    first.cancel()
    await store.close()
    assert first.cancelled()
    async with await SqliteStorage.open(config) as reopened:
        assert [e.event for e in await reopened.read_events("s1")] == [AgentEvent.token("a")]
