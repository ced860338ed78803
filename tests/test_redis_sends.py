"""The bounds on the Redis store's sends and reads (its client's ``socket_timeout``,
persistence/redis/client.py ``connect``), on a real redis-server stopped with
SIGSTOP: a command larger than the socket buffers, sent to a Redis that does not
read, fails within the socket timeout as ``redis unavailable`` (its connection
dropped, nothing of it written); a read of a Redis that does not answer fails so
too; a send cancelled while it waits ends cancelled, not as a timeout; and the next
call, once Redis goes on, is served."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.redis.client import Commands, connect
from bamboo_session.persistence.redis.config import RedisConfig
from tests.redis_server import RedisServer
from tests.store_stalls_support import frozen

BOUND = 1.0  # the client's socket timeout here
# Seconds past the bound a call may take to fail: a test process that gets a sliver of
# a core on a loaded CI machine still makes it; a send without a bound never ends.
SLACK = 8.0
# Far more than loopback's socket buffers hold (4 MiB sent, up to 32 MiB received);
# made by each test that sends it, not held by the module for the whole run.
LARGE_SIZE = 64 * 1024 * 1024


@contextlib.asynccontextmanager
async def store_commands(
    redis: RedisServer, socket_timeout: float = BOUND
) -> AsyncIterator[tuple[Commands, Redis]]:
    config = RedisConfig(url=redis.url())
    client = connect(config, socket_timeout=socket_timeout)
    try:
        assert await client.ping()  # one connection made, and pooled
        yield Commands(client, config, sharded=False), client
    finally:
        await client.aclose()


async def failure_of(call: Callable[[], Awaitable[Any]]) -> tuple[StorageError, float]:
    started = time.monotonic()
    with pytest.raises(StorageError) as failed:
        async with asyncio.timeout(BOUND + SLACK):
            await call()
    return failed.value, time.monotonic() - started


async def test_a_send_redis_does_not_read_fails_within_the_socket_timeout(
    start_redis: Callable[[str], RedisServer],
) -> None:
    redis = start_redis("send")
    async with store_commands(redis) as (commands, client):
        with frozen(redis):
            error, took = await failure_of(lambda: commands.call("SET", "large", b"x" * LARGE_SIZE))
        assert str(error) == "redis unavailable: TimeoutError: Timeout writing to socket"
        assert took >= BOUND * 0.9  # the bound, not a failure of another kind
        # The partial command went with its connection: nothing of it was written.
        assert await commands.call("GET", "large") is None
        assert await commands.call("SET", "small", b"v")
        assert await client.get("small") == b"v"


async def test_a_read_redis_does_not_answer_fails_within_the_socket_timeout(
    start_redis: Callable[[str], RedisServer],
) -> None:
    redis = start_redis("read")
    async with store_commands(redis) as (commands, _):
        await commands.call("SET", "k", b"v")
        with frozen(redis):
            error, took = await failure_of(lambda: commands.call("GET", "k"))
        assert str(error).startswith("redis unavailable: TimeoutError: Timeout reading from")
        assert took >= BOUND * 0.9
        assert await commands.read("HGET", "h", "f") is None  # served again


async def test_a_send_cancelled_while_it_waits_ends_cancelled(
    start_redis: Callable[[str], RedisServer],
) -> None:
    """Cancelled before its bound, the send ends cancelled (not a timeout, which a
    caller would take for Redis's failure), and its connection is dropped, so the
    partial command is never completed by the next one. Its bound is far longer than
    the test's waits, so that a loaded machine's stall cannot make it a timeout."""
    redis = start_redis("cancel")
    async with store_commands(redis, socket_timeout=BOUND + 2 * SLACK) as (commands, _):
        with frozen(redis):
            send = asyncio.create_task(commands.call("SET", "large", b"x" * LARGE_SIZE))
            await asyncio.sleep(BOUND / 4)
            assert not send.done()  # waiting for Redis to read
            send.cancel()
            done, _ = await asyncio.wait({send}, timeout=SLACK)
            assert send in done and send.cancelled()
        assert await commands.call("GET", "large") is None
        assert await commands.call("SET", "small", b"v")
