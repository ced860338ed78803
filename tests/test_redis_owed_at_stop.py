"""Sessions a ``serve`` process on Redis still owes ``disconnected`` as it stops (they
were parked while Redis was away, past ``--disconnect-retention``: their actors
retired owing the state, server/owed_states.py). The stop's last round cannot write
them while Redis is still away, and says so; the sessions stay recorded under the
stopped instance in Redis (presence.lua), and a survivor's dead-instance sweep, or the
next instance to start, parks them once the stopped one's heartbeat lapsed. A user
lists them ``disconnected``, not ``active`` until some later attach.

Real processes throughout: a redis-server stopped and started again on its port with
its append-only file, ``serve`` processes stopped by SIGTERM or SIGKILL by pid."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs
from websockets.asyncio.client import ClientConnection, connect

from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.support import attach, run_server

SESSIONS = 5
# Parked a second, looked at every 0.3 s; a 2 s heartbeat, so that the stopped
# instance's sessions are swept within seconds, not the default 30.
RETENTION = ("--disconnect-retention", "1", "--idle-timeout", "0.3")


def http_text(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        text: str = response.read().decode()
        return text


def no_live_actors(port: int) -> bool:
    found = re.search(r"^bamboo_live_actors (\S+)$", http_text(port, "/metrics"), re.M)
    assert found is not None
    return float(found.group(1)) == 0


def listed(port: int, state: str) -> set[str]:
    page = json.loads(http_text(port, f"/api/v1/sessions?limit=1000&state={state}"))
    return {metadata["id"] for metadata in page["sessions"]}


async def attached(server: ServerProcess, session_id: str) -> ClientConnection:
    ws = await connect(server.url(session_id), open_timeout=10)
    await ws.send(json.dumps({"type": "hello", "create": True}))
    frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert frame["type"] == "welcome", frame
    return ws


async def owing_after_an_outage(
    redis: RedisServer, tmp_path: Path, sessions: int
) -> tuple[tuple[str, ...], ServerProcess, list[str]]:
    """A ``serve`` on ``redis`` whose peers of ``sessions`` sessions left while Redis
    was stopped, every actor retired owing its park (none left in memory); Redis
    still stopped. Its options (for another instance too), it, and the session ids."""
    options = ("--store", redis.url(prefix=prefix_for(tmp_path), heartbeat=2), *RETENTION)
    first = ServerProcess(tmp_path / "first", tmp_path / "first.log", *options)
    await first.start_in_loop()
    ids = [f"owed-{i}" for i in range(sessions)]
    try:
        peers = [await attached(first, session_id) for session_id in ids]
        redis.stop()
        for peer in peers:
            await peer.close()
        await eventually(lambda: asyncio.to_thread(no_live_actors, first.port), timeout=30)
    except BaseException:
        first.kill()
        raise
    return options, first, ids


async def served_through(
    proxy: RedisProxy, tmp_path: Path, name: str, heartbeat: float, *options: str
) -> ServerProcess:
    """A started ``serve`` named ``name`` whose Redis is reached through ``proxy`` (its
    prefix the test's), with a heartbeat of ``heartbeat`` seconds."""
    through_proxy = f"redis://127.0.0.1:{await proxy.start()}/0?prefix={prefix_for(tmp_path)}"
    server = ServerProcess(
        tmp_path / name,
        tmp_path / f"{name}.log",
        *("--store", f"{through_proxy}&heartbeat={heartbeat}", *options),
    )
    await server.start_in_loop()
    return server


async def a_survivor(redis: RedisServer, tmp_path: Path, heartbeat: float) -> ServerProcess:
    """A started ``serve`` on ``redis`` directly, parking what a dead instance left."""
    survivor = ServerProcess(
        tmp_path / "survivor",
        tmp_path / "survivor.log",
        *("--store", redis.url(prefix=prefix_for(tmp_path), heartbeat=heartbeat), *RETENTION),
    )
    await survivor.start_in_loop()
    return survivor


def events(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    return [record for record in server.log_records() if record["event"] == event]


@pytest.mark.parametrize(
    ("stop", "after"),
    [("SIGTERM", "survivor"), ("SIGTERM", "restart"), ("SIGKILL", "survivor")],
)
async def test_states_owed_at_a_stop_with_redis_away_are_listed_disconnected_after(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, stop: str, after: str
) -> None:
    """Peers of five sessions leave while Redis is stopped; their actors retire owing
    the park; the server stops (Redis still away); Redis starts again, then another
    instance (``survivor``), or the stopped one again (``restart``): every session is
    listed ``disconnected`` within a bounded wait."""
    redis = start_redis("redis")
    options, first, ids = await owing_after_an_outage(redis, tmp_path, SESSIONS)
    try:
        if stop == "SIGKILL":
            first.kill()
        else:
            assert await asyncio.to_thread(first.stop) == 0
            (left,) = events(first, "owed states left at stop")
            assert (left["owed"], left["written"], left["left"]) == (SESSIONS, 0, SESSIONS)
            assert left["level"] == "warning"
            # The looks' outage, still on, is told with its count as the process stops.
            (looks,) = events(first, "parked session look still failing at stop")
            assert looks["failed"] >= 1
            assert_no_tracebacks(first.log_records())
        await redis.start_in_loop()
        if after == "restart":
            reader = first
        else:
            reader = ServerProcess(tmp_path / "second", tmp_path / "second.log", *options)
        await reader.start_in_loop()
        try:

            def all_parked() -> bool:
                return listed(reader.port, "disconnected") == set(ids)

            await eventually(lambda: asyncio.to_thread(all_parked), timeout=30)
            assert await asyncio.to_thread(listed, reader.port, "active") == set()
            assert await asyncio.to_thread(listed, reader.port, "idle") == set()
        finally:
            reader.stop()
    finally:
        first.kill()


async def test_the_last_round_of_a_stop_gives_up_after_its_bound(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis runs the owed park and its reply never comes (tests/proxies.py holds it):
    the stop's last round gives up after its bound (half a second here; 3 s by
    default), says what it left, and the stop goes on (a hang would fail the test)."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        url = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
        with capture_logs() as logs:
            async with run_server(store=url, disconnect_retention=1.0, idle_timeout=0.3) as server:
                owed = server.manager.owed_states
                owed.retry_every = 3600.0  # no round but the stop's
                owed.last_round = 0.5
                async with attach(server, "held", create=True):
                    proxy.refusing = True  # Redis unreachable: the park fails
                    proxy.reset()
                await eventually(lambda: server.manager.live_actor("held") is None, timeout=20)
                assert len(owed) == 1
                proxy.refusing = False
                proxy.hold_reply_to(b"park")
        (left,) = [e for e in logs if e["event"] == "owed states left at stop"]
        assert (left["owed"], left["written"], left["left"]) == (1, 0, 1)
        assert proxy.replies_held == 1
    finally:
        proxy.release_replies()
        await proxy.close()
