"""What the tests of a Redis that may lose writes share (tests/test_redis_lossy_*.py and
others that restart a Redis): a lossy redis-server (no append-only file), its snapshot,
a crash and restart of it, two servers on one store, an attach that waits for the
store to answer again, events published and acknowledged, and the steps and checks of
a lossy restart that several tests take (``ten_events_five_in_the_snapshot``,
``both_told_the_epoch_changed``, ``resumes_after_the_loss``,
``no_old_epoch_from_an_instance_not_yet_told``)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio
from websockets.exceptions import ConnectionClosed

from bamboo_session.persistence import StorageError
from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.server.app import BambooServer
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token

CHANGED = "the store restarted and changed the epoch; resume"
LOSSY = {"appendonly": "no", "appendfsync": "everysec", "save": ""}


def lossy_redis(start_redis: Callable[[str], RedisServer]) -> RedisServer:
    """A redis-server with no append-only file: a restart goes back to its last
    snapshot (taken by ``SAVE`` in these tests), and loses what came after."""
    server = start_redis("lossy")
    server.stop()
    server.persistence = dict(LOSSY)
    server.start()
    return server


async def snapshot(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.save()
    finally:
        await client.aclose()


def crash_and_restart(server: RedisServer) -> None:
    server.stop(signal.SIGKILL)
    server.start()


@asynccontextmanager
async def two_servers(url: str) -> AsyncIterator[tuple[BambooServer, BambooServer]]:
    async with run_server(store=url) as a, run_server(store=url) as b:
        yield a, b


@asynccontextmanager
async def attached(
    server: BambooServer, session_id: str, **hello: Any
) -> AsyncIterator[tuple[Peer, dict[str, Any]]]:
    """``attach`` once the server's store answers again (Redis restarting: 1011)."""
    for _ in range(100):
        try:
            async with attach(server, session_id, **hello) as attached_peer:
                yield attached_peer
                return
        except (AssertionError, ConnectionClosed):  # 1011 before its welcome: Redis away
            await asyncio.sleep(0.1)
    raise AssertionError("no welcome in 100 tries")


async def publish(agent: Peer, count: int, start: int = 0) -> list[int]:
    seqs = []
    for i in range(start, start + count):
        ack = await agent.request({"type": "event", "id": i, "event": token(f"e{i}")}, "ack")
        seqs.append(ack["seq"])
    return seqs


async def ten_events_five_in_the_snapshot(server: RedisServer, agent: Peer, viewer: Peer) -> None:
    """Seqs 1 to 10 acknowledged and seen by ``viewer``, Redis's snapshot taken after 5."""
    assert await publish(agent, 5) == [1, 2, 3, 4, 5]
    await snapshot(server)
    assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
    assert [(await viewer.recv_type("event"))["seq"] for _ in range(10)] == list(range(1, 11))


async def resumes_after_the_loss(first: BambooServer, second: BambooServer, old: str) -> None:
    """After a restart that kept 5 of 10 events: a resume with the old epoch from the
    lost seq 10 (on ``second``) and from the kept seq 3 (on ``first``) are both
    ``resumed: false`` under one new epoch; a viewer of the new epoch resumes from 5,
    and the next event takes seq 6 and reaches it."""
    async with attached(second, "s", last_seq=10, epoch=old) as (_, lost):
        assert (lost["resumed"], lost["last_seq"]) == (False, 5)
        new = lost["epoch"]
        assert new != old
    async with (
        attached(first, "s", last_seq=3, epoch=old) as (agent, kept),
        attached(second, "s", last_seq=5, epoch=new) as (viewer, current),
    ):
        assert (kept["resumed"], kept["epoch"]) == (False, new)
        assert (current["resumed"], current["replay"]) == (True, 0)
        assert await publish(agent, 1, 10) == [6]
        event = await viewer.recv_type("event")
        assert (event["seq"], event["event"]["content"]) == (6, "e10")


async def epoch_changed(store: RedisStorage, old: str) -> bool:
    """Whether session ``s``'s epoch is no longer ``old``; False while Redis does not
    answer."""
    try:
        return await store.epoch("s") != old
    except StorageError:
        return False


async def both_told_the_epoch_changed(server: RedisServer, agent: Peer, viewer: Peer) -> None:
    """Ten events, five of them in the snapshot, then a crash: the agent and the viewer
    are closed 1012, the epoch changed."""
    await ten_events_five_in_the_snapshot(server, agent, viewer)
    crash_and_restart(server)
    for peer in (viewer, agent):
        await peer.closed()
        assert (peer.ws.close_code, peer.ws.close_reason) == (1012, CHANGED)


async def no_old_epoch_from_an_instance_not_yet_told(
    server: RedisServer,
    tmp_path: Path,
    before: Callable[[RedisServer, BambooServer, BambooServer], Awaitable[None]] | None = None,
) -> None:
    """Seq 6 lost in a crash, taken again by the first instance under the new epoch; a
    resume from it on the second, whose listener still backs off: ``resumed: false``.
    ``before``: what the test does to the two servers first."""
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with two_servers(url) as (a, b):
        if before is not None:
            await before(server, a, b)
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await snapshot(server)
            assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
        server.stop(signal.SIGKILL)
        await asyncio.sleep(1.5)  # setup, not a measure: the listeners back off meanwhile
        server.start()
        async with attached(a, "s", last_seq=5, epoch=old) as (agent, _):
            assert await publish(agent, 1, 10) == [6]
            async with attached(b, "s", last_seq=6, epoch=old) as (_, resumed):
                assert (resumed["resumed"], resumed["last_seq"]) == (False, 6)
                assert resumed["epoch"] != old


async def _answers(store: Any, session_id: str) -> bool:
    try:  # Redis may still be coming back
        await store.epoch(session_id)
    except StorageError:
        return False
    return True
