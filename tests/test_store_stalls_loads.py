"""A session to load or create from a store that stops answering (a Redis frozen with
SIGSTOP): a ``hello`` whose session must be loaded, or created, closes 1011 at the
deadline, and hellos at once share the one load; a load that ends after the server
began to stop never starts its session; a load or a creation whose caller gave up goes
on, parks the session it loads, or ends with the server's stop, and asyncio has nothing
to report."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.store_stalls_support import (
    DEADLINE,
    SHARED_DEADLINE,
    SHARED_WITHIN,
    WITHIN,
    frozen,
    server_on_own_redis,
)
from tests.support import attach, open_peer, run_server


async def test_a_hello_whose_session_a_frozen_store_must_load_closes_1011(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        # Stored, and not live in this server: an attach loads it from the store.
        session = await server.manager.create_session("u1", session_id="cold")
        assert server.manager.live_actor(session.id) is None
        with loop_reports() as reports:
            with frozen(redis):
                started = time.monotonic()
                closes = []
                for hello in ({}, {"create": True}):  # a create reads the session first
                    async with open_peer(server, "cold") as peer:
                        await peer.send({"type": "hello", **hello})
                        closes.append(await peer.closed(timeout=WITHIN))
                elapsed = time.monotonic() - started
                # The load the first hello gave up on fails at its own deadline: it
                # started after the hello's, and nobody waits for it any more.
                await eventually(lambda: not spawns_under_way(), WITHIN)
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert [code for code, _frames in closes] == [1011, 1011], closes
        assert not [frames for _code, frames in closes if frames]  # no welcome, no error
        assert elapsed < WITHIN + DEADLINE  # the first alone takes 10 s without it
        async with attach(server, "cold") as (_peer, welcome):  # the store is back
            assert welcome["session"]["id"] == "cold"


async def test_a_session_the_store_loads_after_the_stop_began_is_never_started(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    async with run_server(store=store, store_read_timeout=30.0) as server:
        await server.manager.create_session("u1", session_id="cold")
        async with open_peer(server, "cold") as peer:
            with frozen(redis):
                await peer.send({"type": "hello"})
                await asyncio.sleep(0.3)  # read, and its session's load waits on the store
                stopping = asyncio.ensure_future(server.stop())
                await asyncio.sleep(0.2)  # the sessions are retired; the load is not done
            # The store answers: the load ends after the stop retired every session.
            code, frames = await peer.closed(timeout=WITHIN)
            await asyncio.wait_for(stopping, WITHIN)
        assert code == 1012 and frames == []  # no welcome from a stopped server
        assert server.manager.live_actor("cold") is None


async def test_hellos_at_once_to_a_session_a_frozen_store_must_load_all_end_at_the_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path, SHARED_DEADLINE) as (server, redis):
        await server.manager.create_session("u1", session_id="cold")

        async def hello() -> tuple[float, int]:
            async with open_peer(server, "cold") as peer:
                await peer.send({"type": "hello"})
                code, _frames = await peer.closed(timeout=4 * SHARED_WITHIN)
            return time.monotonic() - started, code

        with frozen(redis):
            started = time.monotonic()
            ends = await asyncio.gather(*(hello() for _ in range(4)))
        assert [code for _, code in ends] == [1011] * 4
        # They share the one load: none waits for the others' deadlines in turn.
        assert max(elapsed for elapsed, _ in ends) < SHARED_WITHIN, ends


async def test_a_hello_that_creates_a_session_on_a_frozen_store_closes_1011(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A new session for a user: its per-user cap reads how many they keep first."""
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        with frozen(redis):
            started = time.monotonic()
            async with open_peer(server) as peer:
                await peer.send({"type": "hello", "user_id": "u1"})
                code, frames = await peer.closed(timeout=WITHIN)
            elapsed = time.monotonic() - started
        assert code == 1011 and not frames
        assert elapsed < WITHIN
        async with attach(server, user_id="u1") as (_peer, welcome):  # the store is back
            assert welcome["session"]["user_id"] == "u1"


@contextlib.contextmanager
def loop_reports() -> Iterator[list[dict[str, Any]]]:
    """What asyncio reports to the loop's exception handler meanwhile (a task whose
    exception nobody retrieved, say), collected after a full garbage collection."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        yield reports
        gc.collect()
    finally:
        loop.set_exception_handler(previous)


def spawns_under_way() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "ActorRegistry._spawn"]


async def spawn_started(server: BambooServer, session_id: str, timeout: float) -> None:
    """Returns as soon as the session's spawn is registered (before its first step)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while session_id not in server.manager.actors._spawning:
        assert loop.time() < deadline, "no spawn"
        await asyncio.sleep(0)


async def hello_given_up_while_its_load_waits(
    server: BambooServer, redis: RedisServer, session_id: str
) -> None:
    """A hello whose attach gives up at its deadline (1011) while its session's load,
    which started later with a deadline of its own, still waits on the store, frozen
    on return (the caller lets it go on)."""
    assert redis.pid is not None
    async with open_peer(server, session_id) as peer:
        with frozen(redis):
            # A create reads the session first: half the hello's deadline goes there.
            await peer.send({"type": "hello", "create": True})
            await asyncio.sleep(DEADLINE / 2)
        # The read answered; the store stops again as soon as the load starts.
        try:
            await spawn_started(server, session_id, WITHIN)
        finally:
            os.kill(redis.pid, signal.SIGSTOP)
        try:
            code, frames = await peer.closed(timeout=WITHIN)
            assert (code, frames) == (1011, [])  # the hello gave up
            assert session_id in server.manager.actors._spawning  # the load did not
        except BaseException:
            os.kill(redis.pid, signal.SIGCONT)
            raise


async def test_a_load_whose_hello_gave_up_and_ends_as_the_server_stops_logs_nothing(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The server stops while a load nobody waits for any more is under way, and the
    store answers after: the load used to fail then (ServerStopping, or the store
    closed under it) with nobody to take its failure, and asyncio logged "Task
    exception was never retrieved" with its traceback. The stop now ends it."""
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        await server.manager.create_session("u1", session_id="cold")
        with loop_reports() as reports:
            await hello_given_up_while_its_load_waits(server, redis, "cold")
            try:
                stopping = asyncio.ensure_future(server.stop())
                await eventually(lambda: server.manager.actors.closed, WITHIN)
            finally:
                os.kill(redis.pid or 0, signal.SIGCONT)
            await asyncio.wait_for(stopping, WITHIN)
            assert not spawns_under_way()  # none outlives the stop, nor its store
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert server.manager.live_actor("cold") is None


async def test_a_session_loaded_after_its_hello_gave_up_is_parked_then_retired(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The load goes on once its hello has given up: the session it loads is parked,
    as if its peer had left at once; the next hello takes it, and with nobody in it,
    it retires when its retention ends."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    config = {"store": store, "store_read_timeout": DEADLINE, "disconnect_retention": 1.0}
    async with run_server(**config) as server:
        manager = server.manager
        await manager.create_session("u1", session_id="cold")
        with loop_reports() as reports:
            await hello_given_up_while_its_load_waits(server, redis, "cold")
            os.kill(redis.pid or 0, signal.SIGCONT)
            await eventually(lambda: manager.live_actor("cold") is not None, WITHIN)
            loaded = manager.live_actor("cold")
            assert not spawns_under_way() and manager.page_reads.abandoned == 0
            async with attach(server, "cold") as (_peer, welcome):
                assert welcome["session"]["connections"] == 1
                assert manager.live_actor("cold") is loaded  # no second load
            await eventually(lambda: manager.live_actor("cold") is None, 1.0 + WITHIN)
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert len(manager.actors) == 0 and manager.budget.used == 0


async def test_a_creation_whose_caller_gave_up_and_fails_as_the_server_stops_logs_nothing(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A get-or-create whose caller gave up (cancelled, as a connection's task is at a
    stop) while the creation's write waits on the store: the creation fails once the
    store is closed under it, with nobody left to take its failure, which asyncio logged
    as "Task exception was never retrieved" with its traceback."""
    with loop_reports() as reports:
        async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
            await creation_given_up_as_the_server_stops(server, redis)
        del server
    assert [(r["message"], repr(r.get("exception"))) for r in reports] == []


async def creation_given_up_as_the_server_stops(server: BambooServer, redis: RedisServer) -> None:
    manager, loop = server.manager, asyncio.get_running_loop()
    assert redis.pid is not None
    caller = asyncio.ensure_future(manager.ensure_session("fresh", "u1"))
    deadline = loop.time() + WITHIN
    try:
        while "fresh" not in manager.creations:  # before the creation's first step
            assert loop.time() < deadline and not caller.done(), "no creation"
            await asyncio.sleep(0)
    finally:
        os.kill(redis.pid, signal.SIGSTOP)
    try:
        caller.cancel()
        await asyncio.wait([caller])
        stopping = asyncio.ensure_future(server.stop())
        await eventually(lambda: manager.actors.closed, WITHIN)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    await asyncio.wait_for(stopping, WITHIN)
    await eventually(lambda: "fresh" not in manager.creations, WITHIN)
