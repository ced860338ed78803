"""``--max-connections-per-user`` across instances on one Redis store
(server/user_connections.py, persistence/redis/user_connections.py): the cap is the
user's wherever they connect. A user at the cap over two instances is refused on
either; a connection that closes, or an instance that stops, frees room on the other;
one open past the heartbeat still counts (refreshed), and a SIGKILLed instance's stop
counting once their heartbeat runs out; a Redis that does not answer fails the attach
with 1011 within the read deadline, and what the abandoned call registered is released
once Redis answers again; the calls it holds count as abandoned reads, which bound them.
An acquire or refresh that Redis runs after the release of its connection (given up on
by its instance, its bytes already sent) does not count that connection again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from structlog.testing import capture_logs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence import open_storage
from bamboo_session.persistence.redis.user_connections import RedisUserConnections
from bamboo_session.server.app import BambooServer
from bamboo_session.server.pages import ABANDONED_READS_MAX
from bamboo_session.server.user_connections import SharedUserConnections
from tests.instances import Instances, eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import RECV_TIMEOUT, WELCOME_TIMEOUT, Peer, attach, close_reading, run_server

TOO_MANY = (4429, "too many connections for this user")


async def hello_on(url: str, timeout: float = RECV_TIMEOUT, **hello: Any) -> tuple[int | None, str]:
    """A hello on ``url`` (a stream URL): ``(None, "welcome")`` if welcomed (the
    connection closed then), else the close code and reason it got; its opening and its
    answer each within ``timeout``."""
    async with connect(url, open_timeout=timeout, close_timeout=2) as ws:
        peer = Peer(ws)
        await peer.send({"type": "hello", **hello})
        return await _first(peer, timeout)


async def _first(peer: Peer, timeout: float) -> tuple[int | None, str]:
    with contextlib.suppress(ConnectionClosed):  # refused: closed with no frame
        frame = await peer.recv(timeout)
        assert frame["type"] == "welcome", frame
        await close_reading(peer.ws)
        return None, "welcome"
    code, _ = await peer.closed(timeout)
    return code, peer.ws.close_reason or ""


def stream(server: BambooServer | str, session_id: str) -> str:
    base = server if isinstance(server, str) else f"ws://127.0.0.1:{server.port}"
    return f"{base}/api/v1/stream/{session_id}"


@contextlib.asynccontextmanager
async def pair(url: str, **overrides: Any) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    async with run_server(store=url, **overrides) as a, run_server(store=url, **overrides) as b:
        yield a, b


async def test_the_cap_holds_over_both_instances_and_a_close_frees_room_on_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with pair(url, max_connections_per_user=2) as (a, b):
        assert isinstance(a.user_connections, SharedUserConnections)
        async with attach(a, "s", create=True, user_id="u") as (_, welcome):
            assert welcome["session"]["id"] == "s"
            async with attach(b, "s", user_id="u") as (on_b, _):
                # u holds one connection on each: the third is refused on either.
                assert await hello_on(stream(a, "s"), user_id="u") == TOO_MANY
                assert await hello_on(stream(b, "s"), user_id="u") == TOO_MANY
                # Other users, and connections without a user, are not counted.
                assert await hello_on(stream(a, "s"), user_id="v") == (None, "welcome")
                assert await hello_on(stream(b, "s")) == (None, "welcome")
                assert (a.user_connections.count("u"), b.user_connections.count("u")) == (1, 1)
                await on_b.close()
            # The connection that closed on b leaves room on a.
            await eventually(lambda: _welcomed(hello_on(stream(a, "s"), user_id="u")), timeout=10)
            assert await hello_on(stream(b, "s"), user_id="u") == (None, "welcome")


async def test_an_over_long_user_id_on_an_existing_session_writes_no_key(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    # Ignored, it counts against nobody: no user_conns key named by 300,000 characters,
    # refreshed every heartbeat while the connection lasts.
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    too_long = "u" * 300_000
    async with run_server(store=url, max_connections_per_user=1) as server:
        async with attach(server, "s", create=True, user_id="u"):
            assert await hello_on(stream(server, "s"), user_id="u") == TOO_MANY
            async with attach(server, "s", user_id=too_long) as (_, welcome):
                assert welcome["session"]["user_id"] == "u"
                client = redis.asyncio.Redis(port=redis_server.port)
                try:
                    longest = max([len(key) async for key in client.scan_iter()])
                finally:
                    await client.aclose()
                assert longest < 1000
                assert await hello_on(stream(server, "s"), user_id="u") == TOO_MANY


async def _welcomed(attempt: Any) -> bool:
    return bool(await attempt == (None, "welcome"))


async def test_jsonl_keeps_counting_per_process(tmp_path: Path) -> None:
    async with run_server(tmp_path / "data", max_connections_per_user=1) as server:
        assert not isinstance(server.user_connections, SharedUserConnections)
        async with attach(server, "j", create=True, user_id="u"):
            assert await hello_on(stream(server, "j"), user_id="u") == TOO_MANY


@pytest.fixture
def instances(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Instances]]:
    made: list[Instances] = []

    def make(*extra: str, **params: object) -> Instances:
        made.append(
            Instances(tmp_path, redis_server.url(prefix=prefix_for(tmp_path), **params), *extra)
        )
        return made[-1]

    try:
        yield make
    finally:
        for group in made:
            group.close()


async def test_a_killed_instances_connections_stop_counting_after_the_heartbeat(
    instances: Callable[..., Instances],
) -> None:
    group = instances("--max-connections-per-user", "2", heartbeat=1)
    group.start(2)
    held = [await connect(stream(group.url(0), "k"), open_timeout=5) for _ in range(2)]
    try:
        for i, ws in enumerate(held):
            await Peer(ws).send({"type": "hello", "user_id": "u", "create": True})
            assert (await Peer(ws).recv())["type"] == "welcome", i
        assert await hello_on(stream(group.url(1), "k"), user_id="u") == TOO_MANY
        group.kill(0)  # its two connections stay in Redis until their deadline
        await eventually(
            lambda: _welcomed(hello_on(stream(group.url(1), "k"), user_id="u")), timeout=10
        )
    finally:
        for ws in held:
            ws.transport.abort()
    group.check_logs([1])


async def test_a_redis_that_does_not_answer_fails_the_attach_within_the_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("frozen")
    url = redis.url(prefix=prefix_for(tmp_path), heartbeat=30)
    async with run_server(store=url, max_connections_per_user=1, store_read_timeout=1) as server:
        # An anonymous viewer keeps the session live here: the hello needs no other read.
        async with attach(server, "f", create=True):
            assert redis.pid is not None
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                code, reason = await hello_on(stream(server, "f"), user_id="u")
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            assert (code, reason.split(":")[0]) == (1011, "storage unavailable")
            # What the abandoned acquire registered once Redis answered is released:
            # u's one place is free again, long before the heartbeat (30 s) would free it.
            await eventually(lambda: _welcomed(hello_on(stream(server, "f"), user_id="u")))


async def test_a_stopped_instance_frees_its_users_room_at_once(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30)
    async with run_server(store=url, max_connections_per_user=1) as b:
        async with run_server(store=url, max_connections_per_user=1) as a:
            async with attach(a, "g", create=True, user_id="u") as (on_a, _):
                assert await hello_on(stream(b, "g"), user_id="u") == TOO_MANY
                await a.stop()  # closes u's connection 1012 and unregisters it
                assert (await on_a.closed())[0] == 1012
        # Long before the heartbeat (30 s) would have let it expire.
        await eventually(lambda: _welcomed(hello_on(stream(b, "g"), user_id="u")))


async def test_a_connection_open_past_the_heartbeat_still_counts(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with pair(url, max_connections_per_user=1) as (a, b):
        shared = a.user_connections
        assert isinstance(shared, SharedUserConnections)
        async with attach(a, "h", create=True, user_id="u"):
            # Four refreshes, every heartbeat / 3: past its first deadline.
            await eventually(lambda: shared.refreshes >= 4, timeout=10)
            assert await hello_on(stream(b, "h"), user_id="u") == TOO_MANY


async def test_acquires_a_frozen_redis_holds_count_as_abandoned_reads(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("piling")
    url = redis.url(prefix=prefix_for(tmp_path), heartbeat=30)
    limits = {"max_connections_per_user": 1, "store_read_timeout": 0.5}
    async with run_server(store=url, **limits) as server:
        async with attach(server, "p", create=True):  # live here: no other read at hello
            assert redis.pid is not None
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                # Each hello's acquire is given up on at the deadline, and is still
                # held by the store (redis-py's socket timeout, 10 s, is longer). What
                # tells a deadline kept from one missed is the count of abandoned reads
                # below (a call that ran out redis-py's timeout ended, it is not held),
                # not how long 64 hellos take: their wait is only a guard against a
                # hang, long enough for a loaded machine (5 s failed 1 of 8 at load 28).
                users = [f"u{i}" for i in range(ABANDONED_READS_MAX)]
                given_up = await asyncio.gather(
                    *(hello_on(stream(server, "p"), WELCOME_TIMEOUT, user_id=u) for u in users)
                )
                assert {code for code, _ in given_up} == {1011}
                # The store still holds each, as the page reads count (they bound
                # what piles up behind a store that answers none): one more hello is
                # refused without a store call.
                reads = server.services.page_reads
                assert reads.abandoned == ABANDONED_READS_MAX
                late = await hello_on(stream(server, "p"), WELCOME_TIMEOUT, user_id="late")
                assert late[0] == 1011
                assert reads.abandoned == ABANDONED_READS_MAX
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            # Once Redis answers, the calls end, and what they registered is released.
            await eventually(lambda: reads.abandoned == 0, timeout=WELCOME_TIMEOUT)
            again = stream(server, "p")
            await eventually(
                lambda: _welcomed(hello_on(again, WELCOME_TIMEOUT, user_id="u0")),
                timeout=WELCOME_TIMEOUT,
            )


async def test_the_heartbeat_after_redis_lost_its_scripts_is_not_a_round_trip_per_user(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("flushed")
    storage = await open_storage(redis.url(prefix=prefix_for(tmp_path)))
    try:
        shared = storage.user_connections
        assert isinstance(shared, RedisUserConnections)
        held = {f"user-{u}": [f"c{u}-{i}" for i in range(3)] for u in range(50)}
        client = storage.redis.client
        await client.execute_command("SCRIPT", "FLUSH")  # as a restart leaves it
        await client.execute_command("CONFIG", "RESETSTAT")
        await shared.refresh(held)
        stats = await client.info("commandstats")
        # Each user's script ran once, after one load: no EVAL of it per user.
        assert "cmdstat_eval" not in stats
        loads = [v["calls"] for k, v in stats.items() if k.startswith("cmdstat_script")]
        assert loads == [1]
        for user in held:
            assert await client.zcard(storage.layout.user_conns(user)) == 3
    finally:
        await storage.close()


async def test_failed_releases_while_redis_does_not_answer_log_once(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("mute")
    url = redis.url(prefix=prefix_for(tmp_path), heartbeat=1)
    users = [f"u{i}" for i in range(10)]
    async with run_server(store=url, max_connections_per_user=1) as server:
        shared = server.user_connections
        assert isinstance(shared, SharedUserConnections) and redis.pid is not None
        async with attach(server, "m", create=True):
            with capture_logs() as logs:
                async with contextlib.AsyncExitStack() as held:
                    for user in users:
                        await held.enter_async_context(attach(server, "m", user_id=user))
                    os.kill(redis.pid, signal.SIGSTOP)
                try:
                    # Ten releases, each given up on after the heartbeat: one line.
                    await eventually(lambda: shared.releasing == 0, timeout=10)
                    assert all(shared.count(user) == 0 for user in users)
                finally:
                    os.kill(redis.pid, signal.SIGCONT)
                failed = [e for e in logs if e["event"] == "per-user connection count failed"]
                assert len(failed) == 1, failed
                # Once a call works again, that is said once too.
                await eventually(lambda: _welcomed(hello_on(stream(server, "m"), user_id="u0")))
                await eventually(lambda: _said(logs, "per-user connection count works again"))


def _said(logs: list[dict[str, Any]], event: str) -> bool:
    return any(entry["event"] == event for entry in logs)


async def test_a_refresh_or_acquire_run_after_the_release_does_not_count_it_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The interleaving: the heartbeat's refresh of c1 is sent, then given up on (its
    timeout, or a shutdown cancelling it), so c1's release goes out on another
    connection at once, and Redis runs the release first, then the refresh. So does an
    acquire abandoned at the attach's deadline whose release came first. Here the
    calls are made in that order; neither counts c1 again, and the user's one place
    is free. A member Redis lost (the key gone: an outage longer than the heartbeat)
    is still registered again by the refresh."""
    storage = await open_storage(redis_server.url(prefix=prefix_for(tmp_path), heartbeat=30))
    try:
        shared = storage.user_connections
        assert isinstance(shared, RedisUserConnections)
        client = storage.redis.client
        conns = storage.layout.user_conns("u")
        assert await shared.acquire("u", "c1", 1)
        await shared.release("u", ["c1"])
        await shared.refresh({"u": ["c1"]})  # the late refresh
        assert await shared.acquire("u", "c1", 1)  # the late acquire
        assert await client.zcard(conns) == 0
        assert await shared.acquire("u", "c2", 1)
        assert not await shared.acquire("u", "c3", 1)
        # c2 lost by Redis, still connected here: the refresh registers it again.
        await client.delete(conns)
        await shared.refresh({"u": ["c2"]})
        assert await client.zrange(conns, 0, -1) == [f"{storage.instance}:c2".encode()]
        assert not await shared.acquire("u", "c3", 1)
    finally:
        await storage.close()


async def test_the_marks_of_released_connections_are_bounded_and_expire(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    storage = await open_storage(redis_server.url(prefix=prefix_for(tmp_path), heartbeat=1))
    try:
        shared = storage.user_connections
        assert isinstance(shared, RedisUserConnections)
        client = storage.redis.client
        gone = storage.layout.user_conns_gone("u")
        await shared.release("u", [f"c{i}" for i in range(1500)])
        assert await client.zcard(gone) == 1024  # of one release: the last by name
        assert await client.zscore(gone, f"{storage.instance}:c1499") is not None
        assert 0 < await client.pttl(gone) <= 2000
        # Past twice the heartbeat the marks are gone, and a refresh counts c1499 again.
        await eventually(lambda: _missing(client, gone), timeout=5)
        await shared.refresh({"u": ["c1499"]})
        assert await client.zcard(storage.layout.user_conns("u")) == 1
    finally:
        await storage.close()


async def _missing(client: Any, key: str) -> bool:
    return not await client.exists(key)
