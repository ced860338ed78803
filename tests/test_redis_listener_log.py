"""What the pub/sub listener of a Redis store logs of its failures
(persistence/redis/listener_log.py), given real failures of redis-py on a connection
to a real redis-server.

A lost connection is routine for an operator: a warning with no traceback, once an
outage. An error redis-py's connection layer raises is one (that layer drops its
connection on any error), though it is no ConnectionError: two reads at once on one
connection (as the listener's reader met when its connection was reset while a
subscribe was being sent: both had redis-py make the connection again), a transport
torn down under a write. It was logged as an error with its traceback, the first time
of its kind. A failure of ours, or of redis-py outside that layer, is a bug: an error
with its traceback, once for its kind."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio

from bamboo_session.persistence.redis.listener_log import ListenerLog
from bamboo_session.persistence.redis.pool import from_redis_py
from tests.redis_server import RedisServer

LISTENER = "bamboo_session.persistence.redis.listener"
LOST = "redis pub/sub connection lost"
TWO_READS = (
    "RuntimeError: read() called while another coroutine is already waiting for incoming data"
)


async def two_reads_at_once(redis_server: RedisServer) -> RuntimeError:
    """What redis-py raises for a second read on a connection whose first read waits
    (a real connection: redis-py drops it on that error, as it does on any)."""
    connection = redis.asyncio.Connection(port=redis_server.port)
    await connection.connect()
    first = asyncio.create_task(connection.read_response())
    try:
        await asyncio.sleep(0)  # the first read is waiting for a reply
        with pytest.raises(RuntimeError) as raised:
            await asyncio.wait_for(connection.read_response(), 5)  # a bound on a hang
        assert not connection.is_connected
    finally:
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await connection.disconnect()
    return raised.value


def told(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [
        (record.levelno, record.getMessage(), record.exc_info is not None)
        for record in caplog.records
        if record.name == LISTENER
    ]


async def test_an_error_through_redis_pys_connection_layer_is_a_lost_connection(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LISTENER)
    failure = await two_reads_at_once(redis_server)
    assert from_redis_py(failure)
    log = ListenerLog(logging.getLogger(LISTENER))
    log.failure(LOST, failure, news=True)  # the first of an outage
    log.failure(LOST, failure, news=False)  # a retry's
    assert told(caplog) == [(logging.WARNING, f"{LOST}: {TWO_READS}", False)]


async def test_a_failure_of_our_own_is_a_bug_told_in_full_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LISTENER)
    with pytest.raises(KeyError) as raised:  # a failure of code of ours, played
        _ = {}["missing"]
    failure = raised.value
    assert not from_redis_py(failure)
    log = ListenerLog(logging.getLogger(LISTENER))
    log.failure(LOST, failure, news=True)
    log.failure(LOST, failure, news=True)  # its kind told in full already
    assert told(caplog) == [
        (logging.ERROR, f"{LOST}: KeyError: 'missing'", True),
        (logging.WARNING, f"{LOST}: KeyError: 'missing'", False),
    ]
