"""The pub/sub listener of a Redis store across a crash of Redis (a real
redis-server, SIGKILLed and started again): subscriptions that close while the
listener's connection is going down leave no traceback behind (no task or future
whose exception nobody retrieves), and the listener comes back; a server logs the
loss as a warning that says where and why, with no traceback."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import Session
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_failures import readyz

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


async def test_a_server_logs_a_crash_of_redis_as_a_warning_saying_where_and_why(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``serve`` (its log as JSON) on a real redis-server, a viewer attached; Redis
    killed, then started again. The listener's lost connection is one warning that
    names Redis's address and the reason, no traceback. It read "redis pub/sub
    connection lost: network:ConnectionError" (the repr of redis-py's errors has no
    message)."""
    redis = start_redis("crashing")
    server = ServerProcess(
        tmp_path / "data", tmp_path / "serve.log", "--store", redis.url(prefix=prefix_for(tmp_path))
    )
    await server.start_in_loop()
    try:
        async with connect(server.url("s")) as viewer:
            await viewer.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await viewer.recv())["type"] == "welcome"
            redis.stop(signal.SIGKILL)
            await eventually(lambda: asyncio.to_thread(lambda: readyz(server)[0] == 503))
            await redis.start_in_loop()
            await eventually(lambda: asyncio.to_thread(lambda: readyz(server)[0] == 200))
    finally:
        server.stop()
    records = server.log_records()
    lost = [record for record in records if "pub/sub connection lost" in record["event"]]
    assert [record["level"] for record in lost] == ["warning"], lost
    event = lost[0]["event"]
    assert event.startswith("redis pub/sub connection lost: ConnectionError: "), event
    assert f"127.0.0.1:{redis.port}" in event, event
    # What the read met: the connection closed as Redis died, or, under load, reset
    # (5 runs in 18, with six copies at once). It told of a refusal ("Error 111
    # connecting to") while redis-py connected again by itself at once on the loss:
    # only the listener does, after it logged the loss (test_redis_listener_kills.py).
    reasons = ("Connection closed by server.", f"({errno.ECONNRESET}, ")
    assert any(reason in event for reason in reasons), event
    assert_no_tracebacks(records)
