"""The pub/sub listener of a Redis store (persistence/redis/listener.py) under a storm
of kills of its connection (``CLIENT KILL TYPE pubsub`` on a real redis-server) while
subscriptions to many sessions open and close, each close unsubscribing in the
background.

redis-py made the lost connection again by itself, behind the listener's back: its
reader on the next read, a subscribe or unsubscribe as it was sent, and each of them
once more after failing on the connection (``PubSub._execute``, even with no retries).
Two of them at once on the one connection made two sockets and two handshakes reading
one stream: "read() called while another coroutine is already waiting for incoming
data" was logged, and the first socket stayed open, known to no pool, for as long as
the process ran; and a subscribe or an unsubscribe on a PubSub the listener had just
closed took the pool's only connection, so the listener never connected again (the
store not ready for good). Before the fix each run failed so, in either mode (11 runs
in 11). Now only the listener connects again: the process holds no connection to
Redis once its stores are closed, nothing of the kind is logged, and every session
still gets its events live."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.base import Storage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for

LISTENER = "bamboo_session.persistence.redis.listener"
TWO_READS = "read() called while another coroutine is already waiting"
SESSIONS = 40
KILLS = 60  # kills of the pub/sub connections, at most
SECONDS = 15.0  # the storm's length, at most
WATCHERS = 8  # tasks opening and closing subscriptions meanwhile


async def watch_and_unwatch(
    store: Storage, ids: list[str], draw: random.Random, until: float
) -> None:
    """Opens and closes subscriptions until ``until`` (the loop's time); a refusal
    (Redis unavailable: the connection is down) is what a kill may bring."""
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        picked = draw.sample(ids, 3)
        try:
            subscriptions = [await store.subscribe(session_id, 0) for session_id in picked]
        except StorageError:
            await asyncio.sleep(0.005)
            continue
        await asyncio.sleep(draw.random() * 0.01)
        for subscription in subscriptions:
            subscription.close()  # the last of its session: unsubscribed in the background


async def storm(admin: redis.asyncio.Redis, store: Storage, ids: list[str]) -> int:
    """Kills the pub/sub connections again and again while watchers come and go;
    returns how many kills found a connection to kill."""
    draw = random.Random(313)
    loop = asyncio.get_running_loop()
    until = loop.time() + SECONDS
    watchers = [
        asyncio.create_task(watch_and_unwatch(store, ids, draw, until)) for _ in range(WATCHERS)
    ]
    killed = 0
    try:
        for _ in range(KILLS):
            await asyncio.sleep(0.02 + draw.random() * 0.08)
            if loop.time() > until:
                break
            killed += await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finally:
        # Each watcher ends after its round at ``until``: one still going is hung.
        _, hung = await asyncio.wait(watchers, timeout=until - loop.time() + 10)
        for watcher in hung:
            watcher.cancel()
    assert not hung
    assert [watcher.exception() for watcher in watchers] == [None] * WATCHERS
    return killed


async def clients(admin: redis.asyncio.Redis, kind: str | None = None) -> list[str]:
    command = ["CLIENT", "LIST"] + (["TYPE", kind] if kind else [])
    listing = await admin.execute_command(*command)
    text = listing.decode() if isinstance(listing, bytes) else listing
    return [line for line in text.splitlines() if line]


@pytest.mark.parametrize("mode", ["sharded", "classic"])
async def test_a_storm_of_kills_leaves_one_pubsub_connection_and_live_sessions(
    mode: str,
    start_redis: Callable[[str], RedisServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LISTENER)
    server = start_redis("kills")
    url = server.url(prefix=prefix_for(tmp_path), pubsub=mode)
    admin = redis.asyncio.Redis(port=server.port)
    store = await open_storage(url, cleanup_interval=None)  # the one whose listener is killed
    other = None
    try:
        assert isinstance(store, RedisStorage)
        listener = store.live.listener
        ids = [f"s{i}" for i in range(SESSIONS)]
        for session_id in ids:
            await store.create_session(Session.new(session_id))
        assert await storm(admin, store, ids) >= 10  # the kills found a connection
        assert listener.reconnects >= 10

        await eventually(lambda: store.ready, timeout=15)
        # Settled: one pub/sub connection, the listener's, subscribed to nothing.
        await asyncio.sleep(0.5)
        pubsub = await clients(admin, "pubsub")
        assert len(pubsub) == 1, pubsub

        # Every session gets live what another instance appends (through pub/sub: the
        # store hears of another's appends no other way, and connected again no more).
        other = await open_storage(url, cleanup_interval=None)
        subscriptions = [await store.subscribe(session_id, 0) for session_id in ids]
        reconnects = listener.reconnects
        for session_id in ids:
            await other.append_event(session_id, AgentEvent.token(f"after {session_id}"))
        for session_id, subscription in zip(ids, subscriptions, strict=True):
            batch = await asyncio.wait_for(subscription.next_batch(), 5)
            assert [event.event.content for event in batch] == [f"after {session_id}"]  # type: ignore[union-attr]
            subscription.close()
        assert listener.reconnects == reconnects
    finally:
        if other is not None:
            await other.close()
        await store.close()
    # No socket redis-py made on its own is left open, known to no pool: once both
    # stores are closed, the test's own connection is the only one.
    try:
        await eventually(lambda: _only_one(admin), timeout=5)
    finally:
        left = await clients(admin)
        await admin.aclose()
    assert len(left) == 1, left
    told = [record.getMessage() for record in caplog.records if record.name == LISTENER]
    assert not [message for message in told if TWO_READS in message], told


async def _only_one(admin: redis.asyncio.Redis) -> bool:
    return len(await clients(admin)) == 1
