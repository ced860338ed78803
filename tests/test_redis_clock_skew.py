"""A server whose clock is hours from Redis's (its machine's clock, against the one
Redis runs on) serves sessions by Redis's clock, the one the store stamps and expires
them by (persistence/redis/clock.py): bench/clock_jump.py found, with the server an
hour ahead, every attach of a session Redis held alive refused with 4404 (`session
expired`), with `create` too, and every HTTP read 404; an hour behind, a session it
created was expired before its first append, and a quiet one never went `idle`.

The server runs in a child process under libfaketime, its wall clock two hours from
the test's and Redis's (skipped without it: apt-get install faketime), and is stopped
gracefully (tests/faketime_support.py); a real redis-server on the real clock."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.faketime_support import needs_libfaketime, under_faketime
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks

pytestmark = needs_libfaketime


async def skewed_server(
    tmp_path: Path, redis_server: RedisServer, offset: str
) -> AsyncIterator[ServerProcess]:
    """``serve`` on a Redis store, its wall clock ``offset`` from Redis's (its
    monotonic clock left alone, as a machine whose clock is set wrong has it)."""
    url = redis_server.url(prefix=prefix_for(tmp_path))
    flags = ("--store", url, "--default-ttl", "3600", "--idle-timeout", "0.5")
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", *flags)
    await under_faketime(server, FAKETIME=offset).start_in_loop()
    try:
        yield server
    finally:
        assert await asyncio.to_thread(server.stop) == 0  # a graceful stop, as in service
    assert_no_tracebacks(server.log_records())


@pytest.fixture(name="ahead")
async def ahead_fixture(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[ServerProcess]:
    async for server in skewed_server(tmp_path, redis_server, "+2h"):
        yield server


@pytest.fixture(name="behind")
async def behind_fixture(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[ServerProcess]:
    async for server in skewed_server(tmp_path, redis_server, "-2h"):
        yield server


async def hello(server: ServerProcess, session_id: str, **fields: Any) -> ClientConnection:
    ws = await connect(server.url(session_id), open_timeout=10)
    await ws.send(json.dumps({"type": "hello", **fields}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "welcome", frame
    return ws


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return reply


def read(server: ServerProcess, session_id: str) -> tuple[int, dict[str, Any] | None]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{session_id}?limit=1"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, json.loads(answer.read())["metadata"]
    except urllib.error.HTTPError as refused:
        return refused.code, None


async def test_a_server_two_hours_ahead_of_redis_serves_a_session_of_a_one_hour_ttl(
    ahead: ServerProcess,
) -> None:
    """Expired, by the server's clock, from its first attach on: Redis, whose clock
    the TTL runs on, holds it alive, and so does the server now."""
    publisher = await hello(ahead, "s", create=True)
    try:
        event = {"type": "token", "content": "x"}
        ack = await request(publisher, {"type": "event", "id": 1, "event": event})
        assert ack == {"type": "ack", "id": 1, "seq": 1}
        viewer = await hello(ahead, "s")

        async def idle() -> bool:  # looked at, quiet, and not taken for expired
            status, metadata = await asyncio.to_thread(read, ahead, "s")
            assert status == 200 and metadata is not None and metadata["last_seq"] == 1
            return metadata["state"] == "idle"

        await eventually(idle, timeout=10)
        assert await request(viewer, {"type": "ping", "id": 2}) == {"type": "pong", "id": 2}
        await viewer.close()
    finally:
        await publisher.close()


async def test_a_server_two_hours_behind_redis_makes_a_session_that_lives_and_goes_idle(
    behind: ServerProcess,
) -> None:
    """Made with the server's times, a session of a one-hour TTL had expired by
    Redis's clock before its first append (`not_found`); and the quiet time of a
    session, its last activity (Redis's) against the server's clock, was negative
    for two hours: it never went `idle`."""
    ws = await hello(behind, "s", create=True)
    try:
        event = {"type": "token", "content": "x"}
        ack = await request(ws, {"type": "event", "id": 1, "event": event})
        assert ack == {"type": "ack", "id": 1, "seq": 1}

        async def idle() -> bool:
            _, metadata = await asyncio.to_thread(read, behind, "s")
            return metadata is not None and metadata["state"] == "idle"

        await eventually(idle, timeout=10)  # silent past the idle timeout (0.5 s)
    finally:
        await ws.close()
