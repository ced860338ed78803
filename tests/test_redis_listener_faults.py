"""The pub/sub listener of a Redis store (persistence/redis/listener.py) when what its
connection brings makes it fail with something other than a lost connection: a real
server whose store reaches a real redis-server through a TCP proxy, a viewer attached
to it, and events appended by another instance, which reach the viewer only through
the listener. Two such faults: a push that redis-py's pub/sub cannot read (sent by
the proxy, as a hostile or broken peer of Redis's would), and a batch that is no JSON
(published on the session's channel by a client of the same Redis). Each ended the
listener's task while the store stayed ready (``/readyz`` 200) and no further event
reached the viewer. Now ``/readyz`` answers 503 while the listener cannot connect
again (the proxy refusing new connections), then 200; the viewer gets the events
appended meanwhile, then the next, in order and once; and the failure is logged with
its traceback once for its kind, though it happens twice."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio

from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, opened, run_server

LISTENER = "bamboo_session.persistence.redis.listener"
Fault = Callable[[RedisProxy, RedisStorage], Awaitable[None]]


async def unreadable_push(proxy: RedisProxy, store: RedisStorage) -> None:
    """A RESP3 push of two items where ``smessage`` has three: redis-py's
    ``PubSub.handle_message`` fails on it (IndexError), not its parser."""
    channel = store.layout.channel("s").encode()
    push = b">2\r\n$8\r\nsmessage\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    assert proxy.push_to_subscribers(push) == 1  # the listener's connection alone


def batch_of_no_json(redis_port: int) -> Fault:
    async def publish(proxy: RedisProxy, store: RedisStorage) -> None:
        client = redis.asyncio.Redis(port=redis_port)
        try:
            command = store.redis.publish_command
            assert await client.execute_command(command, store.layout.channel("s"), b"[no") == 1
        finally:
            await client.aclose()

    return publish


async def ready(bamboo: object) -> int:
    status, _ = await get(bamboo, "/readyz")  # type: ignore[arg-type]
    return status


@pytest.mark.parametrize("fault", ["unreadable push", "batch of no JSON"])
async def test_a_listener_that_fails_on_what_it_reads_connects_again(
    fault: str, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER)
    inject, kind = {
        "unreadable push": (unreadable_push, IndexError),
        "batch of no JSON": (batch_of_no_json(redis_server.port), msgspec.DecodeError),
    }[fault]
    prefix = prefix_for(tmp_path)
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    seen: list[tuple[int, str]] = []
    try:
        async with (
            opened(redis_server.url(prefix=prefix)) as other,
            run_server(store=f"redis://127.0.0.1:{port}/0?prefix={prefix}") as bamboo,
            attach(bamboo, "s", create=True) as (viewer, _),
        ):
            store = bamboo.storage
            assert isinstance(store, RedisStorage)

            async def append(content: str) -> None:
                await other.append_event("s", AgentEvent.token(content))

            async def receive() -> None:
                frame = await viewer.recv_type("event")
                seen.append((frame["seq"], frame["event"]["content"]))

            await append("before")
            await receive()
            for round_ in (1, 2):  # the second: a failure of a kind logged already
                proxy.refusing = True
                await inject(proxy, store)
                await eventually(lambda: _is(ready(bamboo), 503), timeout=10)
                await append(f"meanwhile {round_}")
                proxy.refusing = False
                await eventually(lambda: _is(ready(bamboo), 200), timeout=10)
                await append(f"after {round_}")
                await receive()
                await receive()
    finally:
        await proxy.close()
    assert seen == [
        (1, "before"),
        (2, "meanwhile 1"),
        (3, "after 1"),
        (4, "meanwhile 2"),
        (5, "after 2"),
    ]
    failures = [record for record in caplog.records if record.name == LISTENER]
    in_full = [record for record in failures if record.exc_info]
    assert [record.exc_info[0] for record in in_full if record.exc_info] == [kind]
    assert in_full[0].levelno == logging.ERROR
    assert sum(kind.__name__ in record.getMessage() for record in failures) == 2, failures


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
