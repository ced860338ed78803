"""Two servers, A and B, on one Redis store (in this process, on real sockets): a
session's ``idle`` is the whole session's. B's viewers are quiet, and B made the session
``idle``; a connection attaching on A makes it ``active``, and once nobody has been
active for the idle timeout, B writes ``idle`` again, although it held the session idle
all along (before, the store said ``active`` for as long as B's viewers stayed quiet).
A session that is really active on A, its agent publishing there, is never written
``idle`` by B. And an instance whose write of ``active`` over another's state failed at
its look writes it again at the next one, rather than holding the other's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server, token
from tests.test_server_instances import becomes, stored_state

IDLE_TIMEOUT = 0.5
# Where a read asserts ``active`` while a peer publishes every 0.1 s: only a stall of
# the whole process this long could leave its last append too old at a look.
BUSY_IDLE_TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def two_servers(
    redis: RedisServer, tmp_path: Path, idle_timeout: float, a_idle_timeout: float | None = None
) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    """A and B on one keyspace of the test's own; A's idle timeout is B's unless given."""
    url = redis.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with (
        run_server(store=url, idle_timeout=a_idle_timeout or idle_timeout) as a,
        run_server(store=url, idle_timeout=idle_timeout) as b,
    ):
        yield a, b


async def test_an_attach_and_leave_elsewhere_leaves_a_quiet_session_idle_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B's viewer is quiet: B makes the session idle. A connection attaches on A (the
    session is active) and leaves (B's viewer is still attached: A writes nothing).
    Nobody is active: B's look writes ``idle`` again. Before, B held it idle already
    and wrote nothing, and the store said ``active`` until B's viewer spoke."""
    async with (
        two_servers(redis_server, tmp_path, IDLE_TIMEOUT) as (a, b),
        attach(b, "q", create=True) as (_viewer, _),
    ):
        await becomes(a, "q", "idle")
        async with attach(a, "q") as (_, welcome):
            assert welcome["session"]["state"] == "active"  # as stored after the attach
        actor = a.manager.live_actor("q")
        assert actor is not None
        await eventually(lambda: actor.state == SessionState.DISCONNECTED)
        await becomes(b, "q", "idle")  # 20 s: a guard, where B looks every 0.5 s


async def test_a_session_active_on_one_instance_is_not_made_idle_by_the_other(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B's viewer is quiet and B made the session idle; an agent attaches on A and
    publishes every 0.1 s. Two of B's looks find its viewer quiet, and the store's last
    activity recent (A's appends): the session stays ``active`` at every read. A does
    not look during the test: its look finds its agent busy and writes ``active`` over
    an ``idle`` B wrongly wrote, at times before a read here saw it. (Checked to fail
    with B's look writing ``idle`` whenever its own viewer is quiet.)"""
    async with (
        two_servers(redis_server, tmp_path, BUSY_IDLE_TIMEOUT, a_idle_timeout=60) as (a, b),
        attach(b, "w", create=True) as (_viewer, _),
    ):
        await becomes(a, "w", "idle")
        async with attach(a, "w", role="agent") as (agent, _):
            loop = asyncio.get_running_loop()
            looked = loop.time() + 2 * BUSY_IDLE_TIMEOUT + 0.5
            for i in range(100):
                if loop.time() >= looked:
                    break
                await agent.request({"type": "event", "id": i, "event": token("x")}, "ack")
                assert await stored_state(b, "w") == "active", i
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("100 appends before two looks")
        await becomes(b, "w", "idle")  # its agent gone, and B's viewer quiet


async def test_a_failed_write_of_active_at_a_look_is_written_at_the_next(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B's viewer pings; the store says ``disconnected`` (as another instance writes
    when it takes B's connections for gone). B's look writes ``active`` back; its reply
    is lost (the write ran; B's store reports a failure). B still holds the session
    ``active``: once its viewer is quiet, its look writes ``idle``. Before, B took the
    stored ``disconnected`` as its own state before writing, kept it when the write
    failed, and never made the session idle (nor wrote anything at its looks)."""
    prefix = prefix_for(tmp_path)
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    through_proxy = f"redis://127.0.0.1:{port}/0?prefix={prefix}&heartbeat=1"
    try:
        async with run_server(store=through_proxy, idle_timeout=IDLE_TIMEOUT) as b:
            async with attach(b, "f", create=True) as (viewer, _):
                await b.storage.update_session_state("f", SessionState.DISCONNECTED)
                proxy.lose_reply_to(SCRIPTS["state"].sha.encode())
                for i in range(200):  # 20 s: a guard, where B looks every 0.5 s
                    if proxy.lost:
                        break
                    await viewer.request({"type": "ping", "id": i}, "pong")
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError("no look wrote the state in 20 s")
                assert await stored_state(b, "f") == "active"  # the write ran
                await becomes(b, "f", "idle")
    finally:
        await proxy.close()
