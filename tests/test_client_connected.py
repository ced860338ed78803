"""What ``BambooClient.connected`` says through every transition of a client's link:
True as connect() returns; False from the server's restart (1012) on, all through
resumes that fail while no server listens, True again once resumed, False after
close(); and False for good once a resume is refused. Sampled every 10 ms and checked
against the connection itself: never True on a connection that is not open, never
False for long on one the client is attached by. Real servers behind
tests/proxies.py's HttpProxy (the clients' fixed address while a server restarts on
another port) and real clients on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from websockets.protocol import State

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient
from tests.proxies import HttpProxy
from tests.support import run_server
from tests.test_client_partition import proxied, seconds_until

CLIENT = {"backoff_initial": 0.05, "backoff_max": 0.2, "max_retries": 1000}
SAMPLE_EVERY = 0.01


class Sampler:
    """Samples a client's ``connected`` with the state of its connection, and fails
    on a sample that says True of a connection that is not open."""

    def __init__(self, client: BambooClient) -> None:
        self.client = client
        self.samples: list[bool] = []
        self.lies: list[str] = []

    def sample(self) -> None:
        ws = self.client._link._ws  # the connection itself is the check here
        opened = ws is not None and ws.protocol.state is State.OPEN
        connected = self.client.connected
        if connected and not (opened and ws is not None and not ws.transport.is_closing()):
            self.lies.append(f"connected on {ws and ws.protocol.state}")
        self.samples.append(connected)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async def run() -> None:
            for _ in range(10_000):  # 100 s at most
                self.sample()
                await asyncio.sleep(SAMPLE_EVERY)

        task = asyncio.create_task(run())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not self.lies, self.lies[:5]

    def since(self, mark: int) -> list[bool]:
        """The samples taken from the ``mark``-th on."""
        return self.samples[mark:]


async def until(condition: Callable[[], bool], bound: float = 10.0) -> None:
    await seconds_until(condition, bound)


async def test_a_connected_through_restart_failed_resumes_resume_and_close() -> None:
    with tempfile.TemporaryDirectory(prefix="bamboo-test-") as data_dir:
        async with run_server(data_dir) as first:
            proxy = HttpProxy(first.port)
            port = await proxy.start()
            client = await BambooClient.connect(
                f"ws://127.0.0.1:{port}", create=True, role="agent", **CLIENT
            )
            assert client.connected  # as connect() returns
            sampler = Sampler(client)
            async with sampler.running():
                assert await client.publish(Token("before")) == 1
                await first.stop()  # 1012 to the client; nothing listens now
                await until(lambda: not client.connected, 2.0)
                down = len(sampler.samples)
                await asyncio.sleep(1.0)  # resumes tried, and failed, meanwhile
                assert not any(sampler.since(down)), "connected with no server"
                assert client.reconnects == 0 and not client.finished
                async with run_server(data_dir) as second:
                    proxy.port = second.port
                    await until(lambda: client.connected)
                    up = len(sampler.samples)
                    assert client.reconnects == 1
                    assert await client.publish(Token("after")) == 2
                    await asyncio.sleep(0.3)
                    assert all(sampler.since(up)), "not connected while attached"
                    await client.close()
                    assert not client.connected
                    await asyncio.sleep(0.1)
                    assert not client.connected
            await proxy.close()


async def test_b_a_refused_resume_leaves_it_not_connected() -> None:
    async with run_server() as server, proxied(server) as (proxy, proxy_url):
        client = await BambooClient.connect(proxy_url, create=True, role="agent", **CLIENT)
        sampler = Sampler(client)
        async with sampler.running():
            assert client.connected
            proxy.cut()  # and new connections closed at once, until mend()
            await until(lambda: not client.connected, 2.0)
            assert client.session_id is not None
            # Deleted while the client is away: its resume is refused, for good.
            manager = server._manager
            assert manager is not None
            await manager.delete_session(client.session_id)
            proxy.mend()
            await until(lambda: client.finished, 5.0)
            assert not client.connected
            await asyncio.sleep(0.3)
            assert not client.connected and client.reconnects == 0
        await client.close()
