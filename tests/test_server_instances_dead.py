"""Server processes on one Redis, one killed with SIGKILL (r325): a session whose
connections were all on it is ``disconnected`` one heartbeat (and a survivor's sweep,
every third of it) after the kill, though no surviving process ever held it, and is
no longer listed by ``?state=active``; one with a connection left on a survivor stays
``active``; and a process started after the only one died (on its port, or another)
parks them too. A survivor parking a dead instance of 10,000 sessions (seconds of
work) keeps its own connections refreshed meanwhile: no other survivor takes its live
sessions for dead (r333; its claim held: tests/test_redis_presence_dead.py). Real
redis-server, real processes, real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

from bamboo_session.protocol.models import SessionState
from tests.instances import Instances
from tests.redis_server import RedisServer, prefix_for
from tests.test_redis_presence_dead import died_in_many_sessions, open_redis, redis_now_ms

HEARTBEAT = 1.0
# The dead connections' deadline (one heartbeat after their last refresh, which came
# up to a third of one before the kill), then a survivor's next sweep (a third of one).
PARKED_WITHIN = HEARTBEAT * 5 / 3 + 1.5  # and the instance's start, poll and scheduling


def get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


async def metadata(port: int, session_id: str) -> dict[str, Any]:
    body = await asyncio.to_thread(get, port, f"/api/v1/sessions/{session_id}")
    return body["metadata"]  # type: ignore[no-any-return]


async def listed(port: int, state: str) -> list[str]:
    body = await asyncio.to_thread(get, port, f"/api/v1/sessions?state={state}")
    return [session["id"] for session in body["sessions"]]


async def connect(port: int, session_id: str) -> Any:
    peer = await websockets.connect(f"ws://127.0.0.1:{port}/api/v1/stream/{session_id}")
    await peer.send(json.dumps({"type": "hello", "create": True, "user_id": "u"}))
    assert json.loads(await peer.recv())["type"] == "welcome"
    return peer


async def until_parked(port: int, session_id: str, within: float) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        meta = await metadata(port, session_id)
        if meta["state"] != "active" or time.monotonic() > deadline:
            return meta
        await asyncio.sleep(0.1)


def instances_on(redis_server: RedisServer, tmp_path: Path) -> Instances:
    store = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    return Instances(tmp_path, store)


async def test_a_session_only_a_killed_instance_served_is_parked(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    instances = instances_on(redis_server, tmp_path)
    try:
        survivor, doomed = instances.start(2)
        peers = [await connect(doomed, "orphan") for _ in range(2)]
        before = await metadata(survivor, "orphan")
        assert (before["state"], before["connections"]) == ("active", 2)

        instances.kill(1)
        killed = time.monotonic()
        meta = await until_parked(survivor, "orphan", PARKED_WITHIN + 5)
        took = time.monotonic() - killed
        assert (meta["state"], meta["connections"]) == ("disconnected", 0)
        assert took < PARKED_WITHIN, f"parked {took:.1f} s after the kill"
        assert meta["last_activity_at"] == before["last_activity_at"]  # not activity
        assert meta["updated_at"] > before["updated_at"]
        assert "orphan" not in await listed(survivor, "active")
        assert "orphan" in await listed(survivor, "disconnected")
        for peer in peers:
            peer.transport.abort()
        instances.check_logs([0])
    finally:
        instances.close()


async def test_a_session_with_a_connection_on_a_survivor_stays_active(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    instances = instances_on(redis_server, tmp_path)
    try:
        survivor, doomed = instances.start(2)
        staying = await connect(survivor, "shared")
        dying = await connect(doomed, "shared")
        joined = json.loads(await asyncio.wait_for(staying.recv(), 5))
        assert (joined["type"], joined["connections"]) == ("presence", 2)
        instances.kill(1)
        left = json.loads(await asyncio.wait_for(staying.recv(), PARKED_WITHIN + 5))
        assert left["type"] == "presence" and "left" in left and left["connections"] == 1
        await asyncio.sleep(HEARTBEAT)  # further sweeps of the survivor's
        meta = await metadata(survivor, "shared")
        assert (meta["state"], meta["connections"]) == ("active", 1)
        assert "shared" in await listed(survivor, "active")
        dying.transport.abort()
        await staying.close()
        meta = await until_parked(survivor, "shared", 5)
        assert (meta["state"], meta["connections"]) == ("disconnected", 0)
        instances.check_logs([0])
    finally:
        instances.close()


@pytest.mark.parametrize("port", ["same", "new"])
async def test_an_instance_started_after_the_only_one_died_parks_its_sessions(
    redis_server: RedisServer, tmp_path: Path, port: str
) -> None:
    instances = instances_on(redis_server, tmp_path)
    try:
        (only,) = instances.start(1)
        peer = await connect(only, "left-behind")
        if port == "same":
            instances.restart(0)  # a kill -9, then a new process on its port
            (started,) = instances.ports
        else:
            instances.kill(0)
            started = instances.start(1)[1]
        peer.transport.abort()
        meta = await until_parked(started, "left-behind", PARKED_WITHIN + 5)
        assert (meta["state"], meta["connections"]) == ("disconnected", 0)
        assert await listed(started, "active") == []
    finally:
        instances.close()


DEAD_SESSIONS = 10_000  # 1 to 4 s of parking (0.1 to 0.4 ms each): heartbeats of it


# A guard against a hang, not a speed. Its set-up makes 10,000 sessions, then waits out
# the dead instance's heartbeat, which is as long as making them took (as
# tests/test_redis_presence_dead.py's 16,000 do): 9 s in all quiet, 99-112 s at load
# 16-17, 200 s at load 24 (96 s making them, 76 s waiting, 16 s the sweep). The
# default 120 s ended it in loaded suite runs.
@pytest.mark.timeout(600)
async def test_a_survivor_parking_a_big_dead_instance_keeps_its_own_sessions_live(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
    instances = Instances(tmp_path, url)
    other_survivor = await open_redis(url)  # sweeps as a server's heartbeat does
    try:
        (port,) = instances.start(1)
        peer = await connect(port, "mine")
        # Its own heartbeat longer: all registered before the first deadline passes.
        doomed = redis_server.url(prefix=prefix_for(tmp_path), heartbeat=2 * HEARTBEAT)
        dead = (await died_in_many_sessions(doomed, DEAD_SESSIONS)).instance
        alive = other_survivor.layout.instances()
        deadline_of_dead = await other_survivor.redis.client.zscore(alive, dead)
        until = (
            time.monotonic() + 10 + (deadline_of_dead - await redis_now_ms(other_survivor)) / 1000
        )
        while await other_survivor.redis.client.zscore(alive, dead) == deadline_of_dead:
            assert time.monotonic() < until, "the server never claimed the dead instance"
            await asyncio.sleep(0.02)

        seen, swept_by_other = [], 0
        until = time.monotonic() + 3 * HEARTBEAT
        while time.monotonic() < until:
            swept_by_other += await other_survivor.presence.sweep_dead()
            meta = await other_survivor.get_metadata("mine")
            assert meta is not None
            (count,) = await other_survivor.presence.counts(["mine"])
            seen.append((meta.state, count))
            await asyncio.sleep(HEARTBEAT / 3)
        # Its peer live throughout; and the dead instance left to the server, which
        # renews its claim, not parked by the other survivor too.
        wrong = [s for s in seen if s != (SessionState.ACTIVE, 1)]
        assert (wrong, swept_by_other) == ([], 0), f"of {len(seen)} looks"

        until = time.monotonic() + 30
        while await other_survivor.redis.client.zscore(alive, dead) is not None:
            assert time.monotonic() < until, "the server never finished the sweep"
            await asyncio.sleep(0.1)
        last = await other_survivor.get_metadata(f"dead-{DEAD_SESSIONS - 1}")
        assert last is not None and last.state == SessionState.DISCONNECTED
        await peer.close()
        instances.check_logs([0])
    finally:
        await other_survivor.close()
        instances.close()
