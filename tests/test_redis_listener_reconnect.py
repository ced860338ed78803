"""A ``hello`` that finds the pub/sub listener of a Redis store disconnected
(persistence/redis/listener.py ``watch``): a real server whose store reaches a real
redis-server through a TCP proxy, real WebSocket clients, and another instance of the
store, on Redis itself, that creates the sessions and appends.

Redis stopped until the listener waits its longest step (2 s) between tries, then
started again: a ``hello`` made as soon as a read is answered used to be closed 1011,
the listener still waiting out its backoff. Now the hello has it try at once: it is
welcomed; so are many at once, on one pub/sub connection made; and a viewer attached
so gets every event the other instance appends, once and in order. While the listener
cannot connect (the proxy refusing new connections, the pooled ones working on), hellos
are still closed 1011, after far fewer tries than hellos; subscriptions waiting for a
try that hangs (Redis accepting, never answering), or for the one after it, end when the
store closes; and a hello closed at its deadline while it waited is never counted in its
session once the try connects."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import Storage, StorageError, open_storage
from bamboo_session.persistence.redis.listener import RECONNECT_DELAYS, Listener
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import AgentEvent, Session
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.support import WELCOME_TIMEOUT, Peer, attach, get, open_peer, opened, run_server
from tests.test_redis_pool import welcome_or_close

HELLOS = 20
APPENDS = 20
SHORT = {"store_read_timeout": 1.0}  # a hello's deadline: given up on soon
# Tries to connect after which the listener waits its longest step before the next.
TO_LONGEST = len(RECONNECT_DELAYS) - 1


@contextlib.asynccontextmanager
async def behind_proxy(
    redis: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Storage, BambooServer, RedisProxy, RedisStorage]]:
    """Another instance of the store on Redis, and a server whose store reaches Redis
    through a proxy."""
    prefix = prefix_for(tmp_path)
    proxy = RedisProxy(redis.port)
    port = await proxy.start()
    try:
        async with (
            opened(redis.url(prefix=prefix)) as other,
            run_server(store=f"redis://127.0.0.1:{port}/0?prefix={prefix}") as bamboo,
        ):
            store = bamboo.storage
            assert isinstance(store, RedisStorage)
            yield other, bamboo, proxy, store
    finally:
        await proxy.close()


async def down_until_the_longest_wait(listener: Listener, make_down: Callable[[], Any]) -> None:
    """``make_down()``; returns once the listener, its connection lost, failed enough
    tries to wait its longest step before the next one."""
    make_down()
    await eventually(lambda: not listener.connected, timeout=20)
    tries = listener.tries
    await eventually(lambda: listener.tries >= tries + TO_LONGEST, timeout=20)


async def restarted(
    redis: RedisServer, bamboo: BambooServer, other: Storage, session_id: str
) -> None:
    """Redis started again; returns as soon as a read of ``session_id`` is answered,
    by the server and by the other instance."""
    await redis.start_in_loop()
    await eventually(lambda: _answered(bamboo, session_id), timeout=20)
    await eventually(lambda: _read(other, session_id), timeout=20)


async def _answered(bamboo: BambooServer, session_id: str) -> bool:
    status, _ = await get(bamboo, f"/api/v1/sessions/{session_id}")
    return status == 200


async def _read(store: Storage, session_id: str) -> bool:
    with contextlib.suppress(Exception):
        return await store.get_metadata(session_id) is not None
    return False


@contextlib.asynccontextmanager
async def peers(bamboo: BambooServer, session_ids: list[str]) -> AsyncIterator[list[Peer]]:
    """A connection to each session, upgraded, its ``hello`` not sent yet."""
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_peer(bamboo, s)) for s in session_ids]


async def test_a_hello_as_soon_as_a_read_is_answered_after_a_restart_is_welcomed(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("restarted")
    async with behind_proxy(redis, tmp_path) as (other, bamboo, _, store):
        await other.create_session(Session.new("s"))
        await down_until_the_longest_wait(store.live.listener, redis.stop)
        await restarted(redis, bamboo, other, "s")
        welcome = await welcome_or_close(bamboo, "s")
        assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome


async def test_many_hellos_after_a_restart_are_welcomed_on_one_pubsub_connection(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``HELLOS`` hellos sent at once, each to a session of its own (each actor's
    subscription watches its session): every one welcomed, one pub/sub connection made."""
    redis = start_redis("restarted")
    ids = [f"s{i}" for i in range(HELLOS)]
    async with behind_proxy(redis, tmp_path) as (other, bamboo, proxy, store):
        listener = store.live.listener
        for session_id in ids:
            await other.create_session(Session.new(session_id))
        await down_until_the_longest_wait(listener, redis.stop)
        await restarted(redis, bamboo, other, ids[0])
        subscribers, tries = proxy.subscribers, listener.tries
        async with peers(bamboo, ids) as connected:
            await asyncio.gather(*(peer.send({"type": "hello"}) for peer in connected))
            frames = await asyncio.gather(*(peer.recv(WELCOME_TIMEOUT) for peer in connected))
        assert [frame["type"] for frame in frames] == ["welcome"] * HELLOS, frames
        # One; two if the listener's own try came due meanwhile, then the connection
        # was lost and made again: never one per hello.
        assert proxy.subscribers - subscribers <= 2
        assert listener.tries - tries <= 2


async def test_a_viewer_attached_right_after_a_restart_gets_every_event_once_in_order(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The other instance appends ``APPENDS`` events, one by one, from the moment
    Redis answers, while a viewer resumes the session on the server from seq 2 (what
    it saw before the restart): it gets seqs 3 on, each once, in order, whether from
    its replay, from the reads of its subscription, or live."""
    redis = start_redis("restarted")
    async with behind_proxy(redis, tmp_path) as (other, bamboo, _, store):
        await other.create_session(Session.new("s"))
        for content in ("e1", "e2"):
            await other.append_event("s", AgentEvent.token(content))
        stored = await other.get_metadata("s")
        assert stored is not None
        await down_until_the_longest_wait(store.live.listener, redis.stop)
        await restarted(redis, bamboo, other, "s")

        async def append() -> None:
            for i in range(3, 3 + APPENDS):
                await other.append_event("s", AgentEvent.token(f"e{i}"))

        appending = asyncio.create_task(append())
        try:
            async with attach(bamboo, "s", last_seq=2, epoch=stored.epoch) as (viewer, welcome):
                assert welcome["resumed"], welcome
                seen: list[tuple[int, str]] = []
                while not seen or seen[-1][0] < 2 + APPENDS:
                    frame = await viewer.recv_type("event", WELCOME_TIMEOUT)
                    seen.append((frame["seq"], frame["event"]["content"]))
        finally:
            await appending
    assert seen == [(i, f"e{i}") for i in range(3, 3 + APPENDS)]


async def test_hellos_while_the_listener_cannot_connect_are_closed_1011_after_few_tries(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The listener's connection reset, and the proxy refusing new connections: the
    pooled ones (enough for the hellos' reads) work on, so each hello reaches its
    subscription, which finds the listener disconnected. Each is closed 1011 (the
    listener's try failed), with far fewer tries than hellos."""
    ids = [f"s{i}" for i in range(HELLOS)]
    async with behind_proxy(redis_server, tmp_path) as (other, bamboo, proxy, store):
        listener = store.live.listener
        for session_id in ids:
            await other.create_session(Session.new(session_id))
        # A viewer, so that the listener subscribes: the proxy then knows its connection.
        async with attach(bamboo, "viewed", create=True):
            await asyncio.gather(*(store.get_metadata(s) for s in ids * 2))  # pooled

            def refuse_and_reset() -> None:
                proxy.refusing = True
                assert proxy.reset_subscribers() == 1

            await down_until_the_longest_wait(listener, refuse_and_reset)
            tries = listener.tries
            async with peers(bamboo, ids) as connected:
                await asyncio.gather(*(peer.send({"type": "hello"}) for peer in connected))
                ends = await asyncio.gather(*(peer.closed(WELCOME_TIMEOUT) for peer in connected))
            made = listener.tries - tries
            proxy.refusing = False
    assert ends == [(1011, [])] * HELLOS
    assert 1 <= made <= HELLOS // 2, made


async def test_a_subscription_the_listener_cannot_connect_for_says_where_and_why(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis stopped under a store, its port closed: a subscription has the listener
    try, and fails with the try's reason, Redis's address and errno in it. It used to
    say only "the pub/sub connection is down"."""
    redis = start_redis("stopped")
    store = await open_storage(redis.url(prefix=prefix_for(tmp_path)), cleanup_interval=None)
    try:
        assert isinstance(store, RedisStorage)
        await store.create_session(Session.new("s"))
        redis.stop()
        await eventually(lambda: not store.live.listener.connected)
        with pytest.raises(StorageError) as failed:
            await store.subscribe("s", 0)
    finally:
        await store.close()
    refused = f"Error {errno.ECONNREFUSED} connecting to 127.0.0.1:{redis.port}"
    assert str(failed.value).startswith(f"redis unavailable: pub/sub: NoConnection: {refused}")


@contextlib.asynccontextmanager
async def waiting_for_a_hanging_try(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[Listener, Any, list[asyncio.Task[Any]]]]:
    """A store through a proxy, a session ``viewed`` subscribed; the listener's
    connection reset and its next connections accepted and never answered. Yields the
    listener, the subscription to ``viewed`` and two asked for meanwhile: ``s``, waiting for a
    try that hangs (for up to the client's socket timeout, 10 s), and ``later``, asked
    for once that try was under way, waiting for the next one. The store is closed on
    the way out."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        store = await open_storage(
            f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}", cleanup_interval=None
        )
        try:
            assert isinstance(store, RedisStorage)
            listener = store.live.listener
            for session_id in ("viewed", "s", "later"):
                await store.create_session(Session.new(session_id))
            viewing = await store.subscribe("viewed", 0)  # so that the listener subscribes
            # Refused first: redis-py's pub/sub connects again by itself on the loss, and
            # would hang there, before the listener sees it.
            proxy.refusing = True
            assert proxy.reset_subscribers() == 1
            await eventually(lambda: not listener.connected)
            proxy.refusing, proxy.hanging = False, True
            tries = listener.tries
            watching = asyncio.create_task(store.subscribe("s", 0))
            await eventually(lambda: listener.tries > tries)  # a try, which hangs
            later = asyncio.create_task(store.subscribe("later", 0))
            await eventually(lambda: store.live.feed.has_subscribers("later"))
            assert store.live.feed.has_subscribers("s")
            assert not watching.done() and not later.done()
            yield listener, viewing, [watching, later]
        finally:
            await store.close()
    finally:
        await proxy.close()


async def test_subscriptions_waiting_for_a_try_that_hangs_end_when_the_store_closes(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The store's close ends both subscriptions waiting for a try (the one that
    hangs, and the next) with StorageError at once, not after that timeout
    (CONFIRM_TIMEOUT, 10 s); the subscription that was following ends too."""
    async with waiting_for_a_hanging_try(redis_server, tmp_path) as (_, viewing, subscribing):
        pass
    # A bound on a hang, not a measure: they end in a few turns of the loop.
    await asyncio.wait(subscribing, timeout=5)
    for task in subscribing:
        assert task.done() and isinstance(task.exception(), StorageError)
    assert viewing.ended is not None


async def test_a_close_given_up_on_still_ends_the_subscriptions_waiting_for_a_try(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """As above, but the listener's close is itself cancelled once it has begun (a
    shutdown that gives up on it, say): the subscriptions waiting for a try fail all
    the same, told the store is closing. The one waiting for the try after the one
    that hangs was told only once the listener's tasks had stopped: past a cancelled
    close, it waited out CONFIRM_TIMEOUT (10 s), then said "the pub/sub connection is
    down"."""
    async with waiting_for_a_hanging_try(redis_server, tmp_path) as (
        listener,
        viewing,
        subscribing,
    ):
        closing = asyncio.create_task(listener.close())
        await asyncio.sleep(0)  # the close begins: it is stopping the listener's tasks
        assert not closing.done()
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        for task in subscribing:
            with pytest.raises(StorageError, match="redis unavailable: the store is closing"):
                await task
        viewing.close()


async def test_a_hello_given_up_on_while_its_subscription_waits_is_never_counted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A server whose store reaches Redis through the proxy (A), with a short read
    deadline, and another server on Redis itself (B), where a viewer follows session
    ``x``. A's listener disconnected, its next try hanging; a hello to ``y`` is waiting
    for that try, then one to ``x`` comes, which waits for the try after it, and is
    closed 1011 at its deadline. The hanging try then fails, and the next connects:
    the given-up attach must not go on into the session. It used to: the viewer on B
    saw A's closed connection join ``x`` and leave it (presence, ``connections`` 2)
    before the next hello's connection joined."""
    prefix = prefix_for(tmp_path)
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        async with (
            run_server(store=redis_server.url(prefix=prefix)) as other,
            run_server(store=f"redis://127.0.0.1:{port}/0?prefix={prefix}", **SHORT) as bamboo,
        ):
            for session_id in ("x", "y"):
                await other.manager.create_session(session_id=session_id)
            store = bamboo.storage
            assert isinstance(store, RedisStorage)
            listener = store.live.listener
            async with attach(other, "x") as (viewer, _), attach(bamboo, "viewed", create=True):
                await asyncio.gather(*(store.get_metadata(s) for s in ("x", "y") * 10))  # pooled
                proxy.refusing = True
                assert proxy.reset_subscribers() == 1
                await eventually(lambda: not listener.connected)
                proxy.refusing, proxy.hanging = False, True
                tries = listener.tries
                async with open_peer(bamboo, "y") as first, open_peer(bamboo, "x") as given_up:
                    await first.send({"type": "hello"})
                    await eventually(lambda: listener.tries > tries)  # the try, hanging
                    await given_up.send({"type": "hello"})  # waits for the next one
                    assert await given_up.closed(WELCOME_TIMEOUT) == (1011, [])
                    proxy.hanging = False
                    assert proxy.reset_held() == 1
                    await eventually(lambda: listener.connected)
                    # In line behind the given-up attach in x's actor: welcomed once
                    # that attach has ended.
                    async with attach(bamboo, "x") as (_, welcome):
                        presence = await viewer.recv_type("presence", WELCOME_TIMEOUT)
    finally:
        await proxy.close()
    assert presence["joined"] == welcome["connection_id"], presence
    assert presence["connections"] == 2, presence
