"""What tests/test_redis_instances.py runs several servers with: server processes on
one store (``Instances``), a round-robin TCP front that plays the load balancer
(``RoundRobin``), and a windowed publisher and a checking viewer on BambooClient."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bamboo_session.protocol import AgentEvent, Token
from bamboo_session.protocol.client import BambooClient, StoredEvent
from tests.server_process import ServerProcess, assert_no_tracebacks

TIMEOUT = 30.0
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
# What an instance may log when a peer instance or Redis dies under it.
EXPECTED_TROUBLE = (
    "storage failed",
    "storage failing",
    "append failed",
    "appends failing",
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
