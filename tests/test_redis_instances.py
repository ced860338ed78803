"""Several ``bamboo-session serve`` processes on one redis-server act as one server,
and survive the faults a deployment meets (real processes, killed with SIGKILL):

- three instances behind a round-robin TCP front, clients spread over them, one killed
  under load: its clients resume on the others, with no acknowledged event lost and
  none stored or delivered twice;
- an agent on one instance and a viewer on another, across a restart of either;
- presence across processes: joins and leaves on one reach the others, and a killed
  instance's connections are announced as left once their heartbeat runs out;
- a session closed on one instance closes its connections on the others;
- redis-server killed and started again (AOF, fsync always): writes fail with a clear
  error while it is away, nothing acknowledged is lost, and service returns by itself;
- cleanup of expired sessions on two instances: the lease is never held by both (its
  log of grants says so), and passes to the survivor when its holder is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.redis.lease import Lease
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient, RequestError
from tests.instances import (
    FAST,
    TIMEOUT,
    Instances,
    RoundRobin,
    assert_stored_exactly_once,
    clients,
    contents,
    eventually,
    publish_burst,
    watch,
)
from tests.redis_server import RedisServer, prefix_for
from tests.test_redis_lease import check_never_held_twice


@pytest.fixture
def instances(redis_server: RedisServer, tmp_path: Path) -> Iterator[Callable[..., Instances]]:
    made: list[Instances] = []

    def make(*extra: str, redis: RedisServer = redis_server, **params: object) -> Instances:
        store = redis.url(prefix=prefix_for(tmp_path), **params)
        made.append(Instances(tmp_path, store, *extra))
        return made[-1]

    try:
        yield make
    finally:
        for group in made:
            group.close()


# -- an instance killed under load ---------------------------------------------------------


async def test_an_instance_killed_under_load_loses_and_duplicates_nothing(
    instances: Callable[..., Instances],
) -> None:
    group = instances()
    group.start(3)
    sessions, events = 6, 300
    async with RoundRobin(group.ports) as front:
        url = front.url
        names = [f"load{i}" for i in range(sessions)]
        agent_list = [
            BambooClient.connect(url, n, create=True, role="agent", **FAST) for n in names
        ]
        async with clients(*agent_list) as agents:
            async with clients(
                *(BambooClient.connect(url, n, last_seq=0, **FAST) for n in names)
            ) as viewers:
                # 12 clients round-robin over 3 instances: 4 on each.
                watching = [asyncio.create_task(watch(v, events)) for v in viewers]
                acked = dict.fromkeys(names, 0)
                killed = False

                def kill_at_a_third(name: str) -> None:
                    # When the first agent is a third through, every agent is mid-stream.
                    # The instance is frozen first, so that what its agents send next
                    # stays unanswered, then killed: publishes are surely in flight.
                    # (Killed at once, at a third of all acks, its agents could be
                    # between two batch frames, or done: batch frames are fast.)
                    nonlocal killed
                    acked[name] += 1
                    if not killed and acked[name] == events // 3:
                        killed = True
                        frozen = group.processes[1].proc
                        assert frozen is not None
                        os.kill(frozen.pid, signal.SIGSTOP)
                        asyncio.get_running_loop().call_later(0.2, group.kill, 1)

                bursts = [
                    publish_burst(agent, name, events, functools.partial(kill_at_a_third, name))
                    for agent, name in zip(agents, names, strict=True)
                ]
                results = await asyncio.wait_for(asyncio.gather(*bursts), TIMEOUT)
                for seqs in results:
                    assert sorted(seqs) == list(range(1, events + 1))
                for name, seen in zip(
                    names, await asyncio.wait_for(asyncio.gather(*watching), TIMEOUT), strict=True
                ):
                    assert [e.seq for e in seen] == list(range(1, events + 1))
                    assert contents(seen) == [f"{name}:{i}" for i in range(events)]
                reconnects = sum(c.reconnects for c in [*agents, *viewers])
                assert reconnects >= 4, "the killed instance's clients resumed elsewhere"
                assert sum(a.resent for a in agents) > 0, "some publishes were in flight"
                for agent, name in zip(agents, names, strict=True):
                    await assert_stored_exactly_once(agent, name, events)
    group.check_logs([0, 2])


# -- an agent on one instance, a viewer on another --------------------------------------


async def test_publish_on_one_view_on_another_across_restarts_of_either(
    instances: Callable[..., Instances],
) -> None:
    group = instances()
    group.start(2)
    events = 400
    async with (
        clients(BambooClient.connect(group.url(0), "ab", create=True, **FAST)) as (agent,),
        clients(BambooClient.connect(group.url(1), "ab", last_seq=0, **FAST)) as (viewer,),
    ):
        watching = asyncio.create_task(watch(viewer, events))
        acked = 0

        def restart_each_once() -> None:
            nonlocal acked
            acked += 1
            if acked == events // 4:
                group.restart(1)  # the viewer's instance
            elif acked == events // 2:
                group.restart(0)  # the agent's instance

        seqs = await asyncio.wait_for(
            publish_burst(agent, "ab", events, restart_each_once), TIMEOUT
        )
        assert sorted(seqs) == list(range(1, events + 1))
        seen = await asyncio.wait_for(watching, TIMEOUT)
        assert contents(seen) == [f"ab:{i}" for i in range(events)]
        assert agent.reconnects >= 1 and viewer.reconnects >= 1
        await assert_stored_exactly_once(agent, "ab", events)


# -- presence and state across processes -------------------------------------------------


async def test_presence_crosses_processes_and_a_killed_instance_leaves(
    instances: Callable[..., Instances],
) -> None:
    group = instances(heartbeat=1)
    group.start(2)
    async with clients(BambooClient.connect(group.url(1), "pr", create=True)) as (viewer,):
        agent = await BambooClient.connect(group.url(0), "pr", role="agent", reconnect=False)
        assert agent.session is not None and agent.session.connections == 2
        await eventually(lambda: viewer.connections == 2)
        group.kill(0)  # its connection is in Redis until its heartbeat runs out
        await eventually(lambda: viewer.connections == 1, timeout=5)
        with contextlib.suppress(Exception):
            await agent.close()
    group.check_logs([1])


async def test_a_session_closed_on_one_instance_closes_it_on_the_others(
    instances: Callable[..., Instances],
) -> None:
    group = instances()
    group.start(2)
    async with (
        clients(BambooClient.connect(group.url(0), "cl", create=True)) as (closer,),
        clients(BambooClient.connect(group.url(1), "cl")) as (other,),
    ):
        await closer.set_state("closed")
        events = [item async for item in other.events()]  # ends: the session ended
        assert events == [] and other.closed_reason == "session closed" and other.finished
    group.check_logs()


# -- redis-server restarted ------------------------------------------------------------------


async def test_a_redis_restart_loses_nothing_acknowledged_and_service_returns(
    instances: Callable[..., Instances], start_redis: Callable[[str], RedisServer]
) -> None:
    """redis-server is killed (SIGKILL) mid-stream and started again on its AOF: while
    it is away publishes fail with ``internal`` (redis unavailable) or the connection
    closes with 1011 and the client reconnects; the agent retries each failed publish
    with its key until acknowledged. Then every event is in the log exactly once, and
    a viewer on another instance got them all, in order, once."""
    own = start_redis("redis")
    group = instances(redis=own)
    group.start(2)
    events, failures = 300, []

    async def restart_redis_later() -> None:
        await asyncio.sleep(1.0)
        await own.start_in_loop()

    async with (
        clients(BambooClient.connect(group.url(0), "rr", create=True, **FAST)) as (agent,),
        clients(BambooClient.connect(group.url(1), "rr", last_seq=0, **FAST)) as (viewer,),
    ):
        watching = asyncio.create_task(watch(viewer, events))
        restarting = None
        for i in range(events):
            if i == events // 3:
                own.stop(signal.SIGKILL)
                restarting = asyncio.create_task(restart_redis_later())
            for _attempt in range(400):
                try:
                    publish = agent.publish(AgentEvent.token(f"rr:{i}"), key=f"rr-{i}")
                    await asyncio.wait_for(publish, 5)
                    break
                except RequestError as exc:
                    assert exc.code == "internal", exc
                    failures.append(exc.message)
                    await asyncio.sleep(0.05)
        assert restarting is not None
        await restarting
        assert failures, "publishes failed while redis was away"
        assert all("redis unavailable" in message for message in failures), failures[:3]
        seen = await asyncio.wait_for(watching, TIMEOUT)
        assert contents(seen) == [f"rr:{i}" for i in range(events)]
        await assert_stored_exactly_once(agent, "rr", events)
    group.check_logs()


# -- cleanup under the lease -----------------------------------------------------------------


def holder_pid(token: str) -> int:
    """The pid in a lease token: ``<fence>:<host>-<pid>-<random>:<random>``."""
    return int(token.split(":")[1].rsplit("-", 2)[1])


async def test_cleanup_runs_on_one_instance_at_a_time_under_the_lease(
    instances: Callable[..., Instances], redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two instances with a 0.6 s lease: expired sessions are removed, the lease's log
    of grants, renewals and releases shows no two holders at once, and when the holder
    is killed (it never lets go), the other takes the lease once it ran out."""
    group = instances("--default-ttl", "1", "--cleanup-interval", "0.2", lease_ttl=0.6)
    group.start(2)
    prefix = prefix_for(tmp_path)
    store = redis.asyncio.Redis(port=redis_server.port)
    lease = Lease(store, f"{prefix}:{{lease:cleanup}}", "reader", 1)  # to read its log

    async def expire(names: list[str], urls: list[str]) -> None:
        for name in names:
            await (await BambooClient.connect(random.choice(urls), name, create=True)).close()
        metas = [f"{prefix}:{{{name}}}:meta" for name in names]
        await eventually(lambda: gone(metas), timeout=10)

    async def gone(keys: list[str]) -> bool:
        return await store.exists(*keys) == 0

    try:
        await expire([f"x{i}" for i in range(6)], [group.url(0), group.url(1)])
        grants = [r for r in await lease.records() if r.op == "grant"]
        pids = [process.proc.pid for process in group.processes if process.proc]
        holder = pids.index(holder_pid(grants[-1].token))
        group.kill(holder)
        survivor = 1 - holder
        await expire([f"y{i}" for i in range(3)], [group.url(survivor)])
        records = await lease.records()
        check_never_held_twice(records)
        holders = [holder_pid(r.token) for r in records if r.op == "grant"]
        assert holders[-1] == pids[survivor] and pids[holder] in holders
    finally:
        await store.aclose()
    group.check_logs([survivor])
