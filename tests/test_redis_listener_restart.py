"""The pub/sub listener of a Redis store across a crash of Redis (a real
redis-server, SIGKILLed and started again): subscriptions that close while the
listener's connection is going down leave no traceback behind (no task or future
whose exception nobody retrieves), and the listener comes back."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import Session
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for

SESSIONS = 20


async def test_subscriptions_closed_as_redis_dies_leave_no_unretrieved_error(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis is killed, then every subscription closes at once: each close has the
    listener unsubscribe in the background, on a connection that its reader tears
    down meanwhile. Nothing is reported to the loop's exception handler (which is
    where "Task exception was never retrieved" and "Future exception was never
    retrieved" go); Redis started again, the listener reconnects."""
    server = start_redis("durable")
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    store = await open_storage(server.url(prefix=prefix_for(tmp_path)))
    try:
        assert isinstance(store, RedisStorage)
        listener = store.live.listener
        ids = [f"s{i}" for i in range(SESSIONS)]
        for session_id in ids:
            await store.create_session(Session.new(session_id))
        subscriptions = [await store.subscribe(session_id, 0) for session_id in ids]
        server.stop(signal.SIGKILL)
        for subscription in subscriptions:
            subscription.close()
        await eventually(lambda: not listener.connected)
        server.start()
        await eventually(lambda: listener.connected and listener.reconnects >= 1, timeout=10)
    finally:
        await store.close()
        gc.collect()  # an unretrieved future is reported when it is collected
        await asyncio.sleep(0)
        loop.set_exception_handler(None)
    assert [context.get("message") for context in reported] == []
