"""A restart of a Redis that may lose writes it acknowledged (``accept_lossy=true``)
changes every session's epoch (persistence/redis/generation.py), on real
redis-servers killed and started again: a client that resumes with the epoch it held
is told ``resumed: false``, however much of the log Redis kept, and new events are
under the new epoch on every instance, told of the restart or not yet; viewers
connected meanwhile are closed with 1012, and a parked session resumes under the new
epoch. A Redis that keeps what it acknowledged (``appendonly yes``, ``appendfsync
always``) keeps every epoch across a restart, and a resume there replays. The store's
own side of it: tests/test_redis_lossy_epoch_store.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from bamboo_session.persistence.redis.storage import RedisStorage
from tests.redis_lossy_support import (
    attached,
    both_told_the_epoch_changed,
    crash_and_restart,
    lossy_redis,
    no_old_epoch_from_an_instance_not_yet_told,
    publish,
    resumes_after_the_loss,
    snapshot,
    two_servers,
)
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, run_server


async def test_a_lossy_restart_changes_the_epoch_on_every_instance(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """10 events acknowledged, 5 of them in Redis's snapshot; Redis killed and started
    again keeps the 5. A viewer on the other instance is closed with 1012; resumes with
    the old epoch are ``resumed: false`` on both instances, whether ``last_seq`` is
    still in the log (3) or lost (10); the next event takes seq 6 under the new epoch,
    the same on both instances, and reaches a viewer of the new epoch."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true", heartbeat=1)
    async with two_servers(url) as (a, b):
        async with (
            attach(a, "s", create=True, role="agent") as (agent, welcome),
            attach(b, "s", last_seq=0) as (viewer, _),
        ):
            old = welcome["epoch"]
            await both_told_the_epoch_changed(server, agent, viewer)
        await resumes_after_the_loss(a, b, old)


async def test_a_parked_session_resumes_under_the_new_epoch_after_a_lossy_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The agent leaves before Redis restarts: its session's actor is parked, with the
    10 events in memory. After the restart a resume with the old epoch is not served
    from them: ``resumed: false``, the new epoch, and the 5 events Redis kept."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with run_server(store=url, disconnect_retention=60) as a:
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
            await snapshot(server)
            assert await publish(agent, 5, 5) == [6, 7, 8, 9, 10]
        crash_and_restart(server)
        async with attached(a, "s", last_seq=8, epoch=old) as (viewer, welcome):
            assert (welcome["resumed"], welcome["last_seq"]) == (False, 5)
            assert welcome["epoch"] != old
            reply = await viewer.request({"type": "events", "id": 1}, "events")
            assert [event["seq"] for event in reply["events"]] == [1, 2, 3, 4, 5]


async def test_a_durable_redis_keeps_every_epoch_across_a_restart(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """``appendonly yes``, ``appendfsync always``: Redis killed and started again has
    every acknowledged event; a client resuming with the epoch it held is replayed
    what it missed, and the generation's token stays empty."""
    server = start_redis("durable")
    url = server.url(prefix=prefix_for(tmp_path), heartbeat=1)
    async with run_server(store=url) as a:
        async with attach(a, "s", create=True, role="agent") as (agent, welcome):
            old = welcome["epoch"]
            assert await publish(agent, 5) == [1, 2, 3, 4, 5]
        crash_and_restart(server)
        async with attached(a, "s", last_seq=3, epoch=old) as (viewer, resumed):
            assert (resumed["resumed"], resumed["epoch"], resumed["replay"]) == (True, old, 2)
            assert [(await viewer.recv_type("event"))["seq"] for _ in range(2)] == [4, 5]
        storage = a.storage
        assert isinstance(storage, RedisStorage) and storage.generation.token == ""


async def test_an_instance_not_yet_told_serves_no_old_epoch_over_the_new_history(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Redis (lossy) is down long enough for the second instance's listener to wait
    between attempts to reconnect; once it is back, the first instance takes seq 6
    for a new event under the new epoch. A client of the second instance that saw
    the lost seq 6 under the old epoch resumes from it there, before that
    instance's listener is back: ``resumed: false`` and the new epoch, not ``resumed:
    true`` under the old epoch over a seq 6 it never saw."""
    await no_old_epoch_from_an_instance_not_yet_told(lossy_redis(start_redis), tmp_path)
