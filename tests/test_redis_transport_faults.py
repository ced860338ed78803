"""Connections reset at random instants under the Redis store's calls, on the event
loop the server runs on (uvloop): a real redis-server behind a TCP proxy that resets
every connection through it, on both sides, a few times a round while reads, appends,
subscriptions and metadata reads run at once. A reset that reaches the process just
before redis-py writes on a connection makes uvloop raise RuntimeError ("the handler
is closed"), not the OSError that redis-py turns into a ConnectionError (asyncio on
Python 3.12 to 3.14.0 raises TypeError or AttributeError: redis-py issue #4287). It
escaped the store's calls, logged with a traceback: a ``hello`` closed 1011 ``internal
error``, an append ended its session's actor, which closed each of the session's
connections 1011, and a page read answered 500. Every call
now succeeds or fails with StorageError (Redis unavailable), and every acknowledged
append is in the log once. A failure of the store's own code inside such a call is
not taken for one, nor one of redis-py's outside its connection layer (a reply's
callback): each is raised as it is, and marks no connection.

The instants are drawn from a seeded generator, but when a reset reaches redis-py is
up to the scheduler. The rounds used to go on until a few calls met a torn-down
transport, and the test failed if none did; every such call turned out to be the
pub/sub listener's, redis-py reconnecting its connection behind its back (two
handshakes on one reader: "read() called while another coroutine is already
waiting"), which it no longer does (tests/test_redis_listener_kills.py). Since then no
call met one in 120 s of these resets, so the rounds run for ``SECONDS`` and the test
asks only what a user sees: no error but StorageError, every acknowledged append
stored once. That such an error is taken for a lost connection is
tests/test_redis_listener_log.py's (two reads at once on a real connection)."""

from __future__ import annotations

import asyncio
import collections
import random
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import uvloop

from bamboo_session.persistence import StorageError, open_storage
from bamboo_session.persistence.base import Appended, Storage
from bamboo_session.persistence.redis.client import connect
from bamboo_session.persistence.redis.config import RedisConfig
from bamboo_session.persistence.redis.pool import CheckedPool, attempt
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for

SESSIONS = 4
ROUNDS = 3000  # rounds at most, for SECONDS at most
SECONDS = 8.0
MIN_SPREAD = 0.012  # seconds the three resets of a round spread over, at least


async def subscribe_once(store: Storage, session_id: str) -> None:
    subscription = await store.subscribe(session_id, 0)
    subscription.close()


async def subscribed_to_all(store: Storage, ids: list[str]) -> bool:
    """Whether a subscription to each of ``ids`` was made (and closed); False if the
    store said Redis is unavailable."""
    try:
        await asyncio.gather(*(subscribe_once(store, i) for i in ids))
    except StorageError:
        return False
    return True


async def chaos(redis_server: RedisServer, prefix: str) -> dict[str, Any]:
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    draw = random.Random(279)
    escaped: collections.Counter[str] = collections.Counter()
    acknowledged: dict[str, int] = {}  # content -> seq
    ids = [f"s{i}" for i in range(SESSIONS)]
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix}&max_connections=8"
        store = await open_storage(url, cleanup_interval=None)
        try:
            for session_id in ids:
                await store.create_session(Session.new(session_id))

            async def append(session_id: str, content: str) -> None:
                appended: Appended = await store.append_event(session_id, AgentEvent.token(content))
                acknowledged[content] = appended.seq

            async def resets(spread: float) -> None:
                for _ in range(3):
                    await asyncio.sleep(draw.random() * spread / 3)
                    proxy.reset()

            # The resets spread over as long as a round took last: on a loaded machine
            # a round's calls write later, and resets within a fixed 12 ms all came
            # before them.
            loop = asyncio.get_running_loop()
            until, spread = loop.time() + SECONDS, MIN_SPREAD
            for round_ in range(ROUNDS):
                started = loop.time()
                if started > until:
                    break
                calls: list[Awaitable[Any]] = [store.read_events(i) for i in ids * 2]
                calls += [append(i, f"{round_}:{i}:{n}") for n in range(2) for i in ids]
                calls += [store.get_metadata(i) for i in ids]
                calls += [subscribe_once(store, i) for i in ids]
                results = await asyncio.gather(*calls, resets(spread), return_exceptions=True)
                spread = max(MIN_SPREAD, loop.time() - started)
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(result, StorageError):
                        escaped[type(result).__name__] += 1
                await asyncio.sleep(draw.random() * 0.01)
            assert isinstance(store, RedisStorage)
            # The listener back, and subscribing again (after minutes of resets on a
            # loaded machine, its backoff and a last dropped connection take a while).
            await eventually(lambda: store.ready, timeout=30)
            await eventually(lambda: subscribed_to_all(store, ids), timeout=30)
            logs = {i: await store.read_events(i) for i in ids}
        finally:
            await store.close()
    finally:
        await proxy.close()
    stored = [
        (event.event.content, event.seq)  # type: ignore[union-attr]
        for events in logs.values()
        for event in events
    ]
    counts = collections.Counter(content for content, _ in stored)
    return {
        "escaped": dict(escaped),
        "stored twice": [content for content, count in counts.items() if count > 1],
        "acknowledged, not stored": [
            content for content, seq in acknowledged.items() if (content, seq) not in stored
        ],
    }


def test_connections_reset_under_redis_py_fail_calls_as_redis_unavailable(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    seen = uvloop.run(chaos(redis_server, prefix_for(tmp_path)))
    assert seen == {
        "escaped": {},
        "stored twice": [],
        "acknowledged, not stored": [],
    }


async def test_a_failure_of_the_stores_own_code_in_a_call_is_raised_as_it_is(
    redis_server: RedisServer,
) -> None:
    """A TypeError of the caller's, after a command redis-py ran: not a connection
    lost, so neither StorageError nor a mark on the pool's connections."""
    client = connect(RedisConfig(url=redis_server.url()))

    async def ours() -> None:
        await client.execute_command("PING")
        raise TypeError("a bug of ours")

    try:
        await client.execute_command("PING")  # a connection made before the call
        with pytest.raises(TypeError, match="a bug of ours"):
            await attempt(client, ours, only_reads=False)
        pool = client.connection_pool
        assert isinstance(pool, CheckedPool)
        assert (pool.made, pool._stale_up_to) == (1, 0)
    finally:
        await client.aclose()


@pytest.mark.parametrize("only_reads", [True, False])
async def test_a_failure_in_a_reply_callback_of_redis_pys_is_raised_as_it_is(
    only_reads: bool, redis_server: RedisServer
) -> None:
    """An option the reply's callback cannot take, as a caller's bug would pass one:
    redis-py fails on it after the reply was read, on a connection that is fine. It
    was taken for a dropped connection, redis-py's being the deepest frame: a read
    was sent twice, a write failed as a lost connection (so "redis unavailable", the
    bug hidden), and each marked every pooled connection stale. Now it is raised as
    it is, the command sent once (Redis's own count of PINGs), nothing marked."""
    client = connect(RedisConfig(url=redis_server.url()))
    counter = redis.asyncio.Redis(port=redis_server.port)

    async def pings() -> int:
        calls: int = (await counter.info("commandstats")).get("cmdstat_ping", {}).get("calls", 0)
        return calls

    try:
        await client.execute_command("PING")  # a connection made before the call
        before = await pings()
        with pytest.raises(TypeError, match="unexpected keyword argument 'ours'"):
            await attempt(
                client, lambda: client.execute_command("PING", ours=1), only_reads=only_reads
            )
        assert await pings() - before == 1
        pool = client.connection_pool
        assert isinstance(pool, CheckedPool)
        assert (pool.made, pool._stale_up_to) == (1, 0)
    finally:
        await counter.aclose()
        await client.aclose()
