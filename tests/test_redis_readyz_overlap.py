"""An append under way when another append fails for a reason of the store's does not
clear that failure as it succeeds: only an append begun after the failure does, as only
a ``/readyz`` probe begun after it does (tests/test_readiness_probe_overlap.py). A real
server on a real redis-server, reached through a proxy that holds the answer to one
session's append until another session's append has failed: every message append
fails once something else wrote a string over the index of sessions by message count
(WRONGTYPE: the store's failure, tests/test_redis_readyz_refusals.py), while tokens
are stored.

Only the order is arranged, as no load could make it certain: the held append goes on
to Redis before the failing one is sent, and its answer reaches the server after that
failure has been reported (its peer has the error)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio

from tests.redis_server import RedisServer, prefix_for
from tests.support import attach, get, run_server, token

TIMEOUT = 20.0  # a hung wait fails the test; nothing is timed


class AnswerHold:
    """A TCP proxy to Redis on loopback. Once :meth:`arm` is called, the stream whose
    next call names ``marker`` has its answers held until ``released`` is set;
    ``held`` is set as that call goes on to Redis. Every other stream flows."""

    def __init__(self, redis_port: int, marker: bytes) -> None:
        self.redis_port = redis_port
        self.marker = marker
        self.armed = False
        self.held = asyncio.Event()
        self.released = asyncio.Event()
        self._streams: list[asyncio.StreamWriter] = []
        self._serving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def arm(self) -> None:
        self.armed = True

    async def close(self) -> None:
        self._server.close()
        self.released.set()  # nothing is held past the test, failed or not
        for stream in self._streams:
            stream.transport.abort()
        if self._serving:  # each ends at its streams' abort: none is left to the loop's end
            await asyncio.wait(self._serving)

    async def _serve(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        serving = asyncio.current_task()
        assert serving is not None
        self._serving.add(serving)
        serving.add_done_callback(self._serving.discard)
        redis_answers, to_redis = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._streams += [to_client, to_redis]
        holding = asyncio.Event()  # this stream's answers wait for the release

        async def calls() -> None:
            while data := await client.read(65536):
                if self.armed and self.marker in data:
                    self.armed = False
                    holding.set()
                    self.held.set()
                to_redis.write(data)
            to_redis.close()

        async def answers() -> None:
            while data := await redis_answers.read(65536):
                if holding.is_set():
                    await self.released.wait()
                to_client.write(data)
            to_client.close()

        with contextlib.suppress(OSError):
            await asyncio.gather(calls(), answers())


@contextlib.asynccontextmanager
async def answer_hold(redis_server: RedisServer, marker: bytes) -> AsyncIterator[AnswerHold]:
    proxy = AnswerHold(redis_server.port, marker)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_an_append_under_way_when_another_fails_does_not_make_it_ready(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    prefix = prefix_for(tmp_path)
    # The one call that carries this event's content: the append of it.
    async with answer_hold(redis_server, b"an answer held") as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/0?prefix={prefix}"
        async with (
            run_server(store=url) as bamboo,
            attach(bamboo, "slow", create=True) as (slow, _),
            attach(bamboo, "other", create=True) as (other, _),
        ):
            admin = redis.asyncio.Redis(port=redis_server.port)
            try:
                await admin.set(f"{prefix}:{{idx}}:msgs", "not a sorted set")
            finally:
                await admin.aclose()
            proxy.arm()
            await slow.send({"type": "event", "id": 1, "event": token("an answer held")})
            await asyncio.wait_for(proxy.held.wait(), TIMEOUT)
            message = {"type": "message", "message": {"role": "assistant", "content": "no"}}
            refused = await other.request({"type": "event", "id": 2, "event": message}, "error")
            assert "WRONGTYPE" in refused["message"], refused
            proxy.released.set()
            ack = await slow.recv_type("ack")
            assert ack["id"] == 1
            # Stored before the failure: it tells nothing of the store since.
            status, body = await get(bamboo, "/readyz")
            assert status == 503 and "WRONGTYPE" in body, body
            # An append begun after the failure, which it succeeds: ready.
            await slow.request({"type": "event", "id": 3, "event": token("later")}, "ack")
            assert await get(bamboo, "/readyz") == (200, "ready\n")
