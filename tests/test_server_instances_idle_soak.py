"""Two servers, A and B, on one Redis store (in this process, on real sockets), for a
few seconds of bursty activity: A's viewer is quiet; B's agent publishes with gaps about
the idle timeout (0.4 s, both's, and how often each looks), so looks keep finding the
store quiet just as an append is on its way, and B's looks write ``active`` back over
an ``idle`` for its agent's frames. Every reply to A comes 50 ms late (a lagging link),
so each look's read and its ``idle`` write are 0.1 s or more apart, and appends land
between them. Checked throughout (the session's hash polled every 5 ms): an ``idle``
never lands within the idle timeout after the store's last activity (before the write
was conditional, it landed a few ms after an append). Checked at the end: the refused
writes leave nothing stuck; the agent quiet, the session is ``idle`` within two looks
and stays so."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from bamboo_session.tasks import cancel_and_wait
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token
from tests.test_server_instances import stored_state
from tests.test_server_instances_idle_timeouts import state_writes

IDLE_TIMEOUT = 0.4  # A's: it looks this often
LAG = 0.05  # seconds every reply to A waits on its way
RUN = 6.0  # seconds of bursts, at most
MAX_APPENDS = 200
# A compares its own clock with Redis's (one host's); a write's landing is after it.
CLOCK_SLACK_US = 10_000


class LaggingProxy:
    """A TCP proxy on loopback to a redis-server's ``port`` whose replies each wait
    ``lag`` seconds (in order) before they go on to the client."""

    def __init__(self, port: int, lag: float) -> None:
        self.port = port
        self.lag = lag
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                await asyncio.gather(
                    _pump(reader, redis_writer, 0.0), _pump(redis_reader, writer, self.lag)
                )
            finally:
                redis_writer.transport.abort()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, lag: float) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            if lag:
                await asyncio.sleep(lag)
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@dataclass
class Idles:
    """Each ``idle`` seen landed (its ``updated``), and those that landed too soon
    after the store's last activity: (updated - active) in microseconds."""

    landed: list[int] = field(default_factory=list)
    too_soon: list[int] = field(default_factory=list)


@contextlib.asynccontextmanager
async def watched_idles(redis: RedisServer, meta_key: str) -> AsyncIterator[Idles]:
    idles = Idles()
    client = aioredis.Redis(host="127.0.0.1", port=redis.port)

    async def watch() -> None:
        while True:
            state, updated, active = await client.hmget(meta_key, "state", "updated", "active")
            # A state write sets ``updated`` alone; activity sets it and ``active`` to
            # one time (an append over a stored idle: no idle landing).
            if state == b"idle" and updated != active and int(updated) not in idles.landed:
                idles.landed.append(int(updated))
                # Activity after the idle is not its concern; activity before it is,
                # within the idle timeout.
                gap = int(updated) - int(active)
                if 0 < gap < IDLE_TIMEOUT * 1_000_000 - CLOCK_SLACK_US:
                    idles.too_soon.append(gap)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(watch())
    try:
        yield idles
    finally:
        await cancel_and_wait(task)
        await client.aclose()


async def test_bursts_elsewhere_never_meet_an_idle_and_the_quiet_end_is_idle(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = prefix_for(tmp_path)
    proxy = LaggingProxy(redis_server.port, LAG)
    port = await proxy.start()
    lagging = f"redis://127.0.0.1:{port}/0?prefix={prefix}&heartbeat=1"
    try:
        async with (
            run_server(store=lagging, idle_timeout=IDLE_TIMEOUT) as a,
            run_server(store=redis_server.url(prefix=prefix), idle_timeout=IDLE_TIMEOUT) as b,
            attach(a, "w", create=True) as (_viewer, _),
            attach(b, "w", role="agent") as (agent, _),
        ):
            meta_key = b.storage.layout.meta("w")  # type: ignore[attr-defined]
            async with (
                state_writes(redis_server, prefix) as writes,
                watched_idles(redis_server, meta_key) as idles,
            ):
                appends = await _bursts(agent)
                loop = asyncio.get_running_loop()
                quiet_since = loop.time()
                await eventually(lambda: _stored_idle(b), 5.0)
                settled = loop.time() - quiet_since
                await asyncio.sleep(2 * IDLE_TIMEOUT)  # and it stays so
                assert await stored_state(b, "w") == "idle"
                actor = a.manager.live_actor("w")
                assert actor is not None and actor.state == SessionState.IDLE
            tried = writes.count("idle")
            print(
                f"appends={appends} idle_writes_tried={tried} landed={len(idles.landed)}"
                f" too_soon={idles.too_soon} idle_after_quiet={settled:.2f}s"
            )
            assert idles.too_soon == []
            assert settled < 2 * IDLE_TIMEOUT + 4 * LAG + 0.5
    finally:
        await proxy.close()


async def _stored_idle(server: BambooServer) -> bool:
    return await stored_state(server, "w") == "idle"


async def _bursts(agent: Peer) -> int:
    """B's agent publishes with gaps of 0.9 to 1.6 idle timeouts, for ``RUN`` s at most:
    how many appends were acknowledged."""
    rng = random.Random(302)
    loop = asyncio.get_running_loop()
    until = loop.time() + RUN
    count = 0
    while count < MAX_APPENDS and loop.time() < until:
        count += 1
        await agent.request({"type": "event", "id": count, "event": token("x")}, "ack")
        await asyncio.sleep(rng.uniform(0.9, 1.6) * IDLE_TIMEOUT)
    return count
