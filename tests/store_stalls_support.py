"""What the tests of a store that stops answering share (tests/test_store_stalls_*.py,
and others that freeze a store): the read deadline and the bounds its outcomes are
awaited within, a server on a redis-server of its own, and ``frozen``, which stops that
redis-server (SIGSTOP, as a stalled disk or a hung network would leave a store) for a
while."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from bamboo_session.server.app import BambooServer
from tests.redis_server import RedisServer, prefix_for
from tests.support import run_server

DEADLINE = 1.0
# Without the deadline a read ends with redis-py's socket timeout (10 s,
# persistence/redis/client.py) at best, and never on a store without one: a bound of
# 6 s leaves 5 s to a test's process that gets a quarter of a core, and is still 4 s
# short of the store without a deadline.
WITHIN = DEADLINE + 5.0
# Requests that must not wait in turn for one another's deadlines: the first ends at one
# deadline, the second to wait in turn at two. With 3 s, a bound of 1.5 deadlines
# leaves 1.5 s on either side, where 1 s left none (the right end at 1 s under load
# and the wrong one at 2 s).
SHARED_DEADLINE = 3.0
SHARED_WITHIN = 1.5 * SHARED_DEADLINE


@contextlib.asynccontextmanager
async def server_on_own_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, deadline: float = DEADLINE
) -> AsyncIterator[tuple[BambooServer, RedisServer]]:
    """A server on a redis-server of its own (to SIGSTOP with :func:`frozen`), with
    the read deadline of these tests."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    async with run_server(store=store, store_read_timeout=deadline) as server:
        yield server, redis


@contextlib.contextmanager
def frozen(redis: RedisServer) -> Iterator[None]:
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.pid, signal.SIGCONT)
