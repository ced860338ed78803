"""Reproducers of what the store differential (bench/store_differential.py, r341)
found: the same server, on JSONL, SQLite and Redis, answering differently after a
``kill -9`` and a restart. Each test runs on every store: Redis, which parks what a
dead server left attached (docs/storage-redis.md), answers as docs/protocol.md says
(``active``: at least one connection attached; an attach to a session with no
connection is activity); the single-process stores did not.

Real servers on ephemeral loopback ports, killed with SIGKILL by pid; a real
redis-server (the ``redis_server`` fixture)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess

HEARTBEAT = 1.0  # Redis presence: a killed server's connections leave within 4/3 of it
STORES = ("jsonl", "sqlite", "redis")


def store_flags(kind: str, tmp_path: Path, redis_server: RedisServer | None) -> tuple[str, ...]:
    if kind == "sqlite":
        return ("--store", f"sqlite://{tmp_path / 'sessions.db'}?durability=fsync")
    if kind == "redis":
        assert redis_server is not None
        return ("--store", f"{redis_server.url(prefix_for(tmp_path))}&heartbeat={HEARTBEAT:g}")
    return ("--durability", "fsync")


@pytest.fixture(params=STORES)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    kind = request.param
    redis = request.getfixturevalue("redis_server") if kind == "redis" else None
    # A long TTL: expiry plays no part; the default idle timeout (300 s) neither.
    flags = ("--default-ttl", "3600", *store_flags(kind, tmp_path, redis))
    process = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    process.start()
    try:
        yield process
    finally:
        process.kill()


def metadata(server: ServerProcess, session_id: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{session_id}?limit=1"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer["metadata"]


async def welcome(server: ServerProcess, session_id: str) -> tuple[Any, dict[str, Any]]:
    ws = await connect(server.url(session_id), open_timeout=10)
    await ws.send(json.dumps({"type": "hello", "create": True, "user_id": "u1"}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "welcome", frame
    return ws, frame["session"]


async def state_becomes(
    server: ServerProcess, session_id: str, state: str, within: float
) -> dict[str, Any]:
    """The session's metadata once its state is ``state``, or the last read."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await asyncio.to_thread(metadata, server, session_id)
        if found["state"] == state or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_a_session_attached_at_a_kill_is_disconnected_after_the_restart(
    server: ServerProcess,
) -> None:
    """Failed on main for JSONL and SQLite: the session stayed ``active`` with
    ``connections: 0`` after the restart, for as long as nobody attached (SQLite and
    JSONL: no look parks a session the new process never loaded)."""
    ws, _ = await welcome(server, "chat")
    await ws.send(
        json.dumps({"type": "event", "id": 1, "event": {"type": "token", "content": "a"}})
    )
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ack"
    server.kill()
    ws.transport.abort()
    await server.start_in_loop()

    found = await state_becomes(server, "chat", "disconnected", within=HEARTBEAT * 4 / 3 + 2)

    assert (found["connections"], found["state"]) == (0, "disconnected")


async def test_the_first_attach_after_a_kill_is_activity(server: ServerProcess) -> None:
    """Failed on main for JSONL and SQLite: the session left ``active`` by the kill
    made the attach after the restart look like one to a session already attached, so
    it was not activity: ``last_activity_at`` (and ``expires_at``: the TTL) stayed as
    before the kill, and ``active_after`` listings left the session out."""
    ws, _ = await welcome(server, "chat")
    before = await asyncio.to_thread(metadata, server, "chat")
    server.kill()
    ws.transport.abort()
    await server.start_in_loop()
    await asyncio.sleep(HEARTBEAT * 4 / 3 + 1)  # Redis parks it meanwhile; not the point here

    again, session = await welcome(server, "chat")
    try:
        assert session["last_activity_at"] > before["last_activity_at"]
        assert session["expires_at"] > before["expires_at"]
    finally:
        await again.close()


async def test_a_session_parked_before_a_kill_stays_disconnected(server: ServerProcess) -> None:
    """Failed on main for JSONL: its ``disconnected`` (the server's move when the last
    connection left, which the HTTP API already showed) was lost to the kill, and the
    session came back ``active`` with no connection."""
    ws, _ = await welcome(server, "chat")
    await ws.close()
    parked = await state_becomes(server, "chat", "disconnected", within=5)
    assert parked["state"] == "disconnected"
    await asyncio.sleep(0.5)  # well past any write the park makes
    server.kill()
    await server.start_in_loop()

    found = await asyncio.to_thread(metadata, server, "chat")

    assert (found["connections"], found["state"]) == (0, "disconnected")
