"""The pub/sub listener of a Redis store (persistence/redis/listener.py) when what its
connection brings is not what it expects: real servers whose stores share a real
redis-server, one of them through a TCP proxy, and viewers that get another
instance's events only through their listener.

- A push that redis-py's pub/sub cannot read (sent by the proxy, as a broken peer of
  Redis's would): the connection can no longer be trusted. It ended the listener's task
  while the store stayed ready (``/readyz`` 200) and no further event reached the
  viewer. Now ``/readyz`` answers 503 while the listener cannot connect again (the
  proxy refusing new connections), then 200; the viewer gets the events appended
  meanwhile, then the next, in order and once; the failure is logged with its
  traceback once for its kind, though it happens twice.
- Messages on a session's channel that the listener cannot read (a batch garbled on
  its way, then a flood of batches that are no JSON, published by a plain client of
  the same Redis): the connection is fine. They used to end the listener's task, then
  cost a reconnect each: every instance that followed the session flapped
  out of readiness (``/readyz`` 503 most of the time under the flood) and caught
  every session up again, a warning logged per message. Now each is dropped and
  counted, no instance reconnects or leaves readiness, and the session is caught up
  from the store: the viewer gets the garbled batch's event without waiting for a
  next one, then the next, in order and once; one traceback is logged.
- A subscribe whose confirmation is lost with the connection: the subscription fails
  with the loss, said once."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path

import msgspec
import pytest
import redis.asyncio

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, get, opened, run_server, token

LISTENER = "bamboo_session.persistence.redis.listener"
FLOOD = 50


async def unreadable_push(proxy: RedisProxy, store: RedisStorage) -> None:
    """A RESP3 push of two items where ``smessage`` has three: redis-py's
    ``PubSub.handle_message`` fails on it (IndexError), not its parser."""
    channel = store.layout.channel("s").encode()
    push = b">2\r\n$8\r\nsmessage\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    assert proxy.push_to_subscribers(push) == 1  # the listener's connection alone


async def ready(bamboo: BambooServer) -> int:
    status, _ = await get(bamboo, "/readyz")
    return status


async def test_a_push_the_listener_cannot_read_makes_it_connect_again(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER)
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
                await unreadable_push(proxy, store)
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
    assert [record.exc_info[0] for record in in_full if record.exc_info] == [IndexError]
    assert in_full[0].levelno == logging.ERROR
    assert sum("IndexError" in record.getMessage() for record in failures) == 2, failures


async def test_unreadable_messages_on_a_sessions_channel_are_dropped_and_it_is_caught_up(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LISTENER)
    prefix = prefix_for(tmp_path)
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    hostile = redis.asyncio.Redis(port=redis_server.port)
    seen: list[tuple[int, str]] = []
    try:
        async with (
            run_server(store=redis_server.url(prefix=prefix)) as near,
            run_server(store=f"redis://127.0.0.1:{port}/0?prefix={prefix}") as far,
            attach(near, "s", create=True) as (agent, _),
            attach(far, "s") as (viewer, _),
        ):
            stores = [near.storage, far.storage]
            assert all(isinstance(store, RedisStorage) for store in stores)

            async def receive() -> None:
                frame = await viewer.recv_type("event")
                seen.append((frame["seq"], frame["event"]["content"]))

            await publish(agent, "before")
            await receive()
            # This batch reaches the far instance as no JSON; nothing follows it.
            proxy.garble_pushes(b'"content":"garbled"', b'"content":"garbled!')
            await publish(agent, "garbled")
            await receive()  # caught up from the store, not from a next batch
            assert proxy.garbled == 1
            proxy.garble_pushes()
            channel, command = far.storage.layout.channel("s"), far.storage.redis.publish_command
            receivers = [
                await hostile.execute_command(command, channel, b"[no") for _ in range(FLOOD)
            ]
            await publish(agent, "after")  # behind the flood on each connection
            await receive()
            statuses = [await ready(near), await ready(far)]
            listeners = [store.live.listener for store in stores]  # type: ignore[attr-defined]
    finally:
        await hostile.aclose()
        await proxy.close()
    assert seen == [(1, "before"), (2, "garbled"), (3, "after")]
    assert statuses == [200, 200]
    assert set(receivers) == {2}  # both instances subscribed throughout
    assert [(listener.unreadable, listener.reconnects) for listener in listeners] == [
        (FLOOD, 0),
        (FLOOD + 1, 0),
    ]
    records = [record for record in caplog.records if record.name == LISTENER]
    assert not [record for record in records if "connection lost" in record.getMessage()]
    in_full = [record.exc_info[0] for record in records if record.exc_info]
    assert in_full == [msgspec.DecodeError, msgspec.DecodeError], records  # one per instance
    assert len(records) == 2, records  # the rest counted, not logged one by one


async def publish(agent: Peer, content: str) -> None:
    await agent.request({"type": "event", "id": content, "event": token(content)}, "ack")


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected


async def test_a_subscription_whose_confirmation_is_lost_with_the_connection_says_so_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The listener's connection reset after its subscribe for a session reached
    Redis, before the confirmation came back: the subscription fails with the loss,
    said once. It read "redis unavailable: pub/sub connection lost: StorageError('redis
    unavailable: pub/sub connection lost')"."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
        async with opened(url) as store:
            assert isinstance(store, RedisStorage)
            await store.create_session(Session.new("s"))
            proxy.lose_reply_to(store.layout.channel("s").encode())
            with pytest.raises(StorageError) as failed:
                await store.subscribe("s", 0)
            assert proxy.lost == 1
    finally:
        await proxy.close()
    assert str(failed.value) == "redis unavailable: pub/sub connection lost"
