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
import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from bamboo_session.persistence.redis.lease import Lease
from bamboo_session.protocol import AgentEvent, Token
from bamboo_session.protocol.client import BambooClient, RequestError, StoredEvent
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_redis_lease import check_never_held_twice

TIMEOUT = 30.0
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
# What an instance may log when a peer instance or Redis dies under it.
EXPECTED_TROUBLE = (
    "storage failed",
    "append failed",
    "reading the session's events failed",
    "presence",
    "redis pub/sub connection lost",
    "catching up after a reconnect failed",
    "cleanup failed",
)


class Instances:
    """Server processes on one store, each with its own log; restarted on its port."""

    def __init__(self, directory: Path, store: str, *extra: str) -> None:
        self.directory = directory
        self.store = store
        self.extra = extra
        self.processes: list[ServerProcess] = []

    def start(self, count: int) -> list[int]:
        for _ in range(count):
            self.processes.append(self._process(len(self.processes)))
            self.processes[-1].start()
        return self.ports

    def _process(self, index: int, *more: str) -> ServerProcess:
        log = self.directory / f"instance-{index}.log"
        args = ("--store", self.store, *self.extra, *more)
        return ServerProcess(self.directory / f"data-{index}", log, *args)

    @property
    def ports(self) -> list[int]:
        return [process.port for process in self.processes]

    def url(self, index: int) -> str:
        return f"ws://127.0.0.1:{self.processes[index].port}"

    def kill(self, index: int) -> None:
        self.processes[index].kill()

    def restart(self, index: int) -> None:
        """Start instance ``index`` again, on the port it had."""
        old = self.processes[index]
        old.kill()
        self.processes[index] = self._process(index, "--port", str(old.port))
        self.processes[index].start()

    def close(self) -> None:
        for process in self.processes:
            process.kill()

    def check_logs(self, indexes: list[int] | None = None) -> None:
        for index in range(len(self.processes)) if indexes is None else indexes:
            assert_no_tracebacks(self.processes[index].log_records(), EXPECTED_TROUBLE)


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


class RoundRobin:
    """A TCP front for several instances, as a load balancer with no sticky sessions:
    each new connection goes to the next instance that accepts it. Streams of an
    instance that dies end with it (the client sees its connection drop)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports  # the test may change it
        self._next = 0
        self._transports: set[asyncio.BaseTransport] = set()

    async def __aenter__(self) -> RoundRobin:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.server.close()
        for transport in list(self._transports):
            transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(len(self.ports)):
            port = self.ports[self._next % len(self.ports)]
            self._next += 1
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue  # that instance is down: the next one
        else:
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self._transports.update(pair)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            for transport in pair:
                transport.abort()
                self._transports.discard(transport)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


async def publish_burst(
    agent: BambooClient, name: str, count: int, on_acked: Callable[[], None], window: int = 16
) -> list[int]:
    """``count`` publishes in order, up to ``window`` unacknowledged at once."""
    room = asyncio.Semaphore(window)

    async def one(i: int) -> int:
        try:
            return await agent.publish(AgentEvent.token(f"{name}:{i}"))
        finally:
            room.release()
            on_acked()

    tasks = []
    for i in range(count):
        await room.acquire()
        tasks.append(asyncio.create_task(one(i)))
    return await asyncio.gather(*tasks)


async def watch(viewer: BambooClient, count: int) -> list[StoredEvent]:
    """The next ``count`` events; the client itself fails on a gap or a duplicate."""
    seen: list[StoredEvent] = []
    async for item in viewer.events():
        assert isinstance(item, StoredEvent), item  # a Reset would mean resume failed
        seen.append(item)
        if len(seen) == count:
            break
    return seen


def contents(events: list[StoredEvent]) -> list[str]:
    return [e.event.content for e in events if isinstance(e.event, Token)]


async def assert_stored_exactly_once(client: BambooClient, name: str, count: int) -> None:
    log = await client.read_all_events()
    assert [e.seq for e in log] == list(range(1, count + 1))
    assert contents(log) == [f"{name}:{i}" for i in range(count)]


@contextlib.asynccontextmanager
async def clients(*connecting: Any) -> AsyncIterator[list[BambooClient]]:
    opened = list(await asyncio.gather(*connecting))
    try:
        yield opened
    finally:
        await asyncio.gather(*(client.close() for client in opened))


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
                acked = 0

                def kill_at_a_third() -> None:
                    nonlocal acked
                    acked += 1
                    if acked == sessions * events // 3:
                        group.kill(1)

                bursts = [
                    publish_burst(agent, name, events, kill_at_a_third)
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


async def eventually(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    """Polls ``condition`` (a function, or a coroutine function) until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        met = condition()
        if asyncio.iscoroutine(met):
            met = await met
        if met:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout} s")


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
        await asyncio.to_thread(own.start)

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
