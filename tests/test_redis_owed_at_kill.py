"""A ``serve`` process on Redis that owes sessions ``disconnected`` (their peers left
while Redis was away, past ``--disconnect-retention``: server/owed_states.py), killed
with SIGKILL right after Redis came back: after its presence heartbeat ran again, before
its owed states were written (by the queue of retired actors' states, or by a parked
actor's look). That refresh drops the process's own presence entries
past their deadline; it used to drop the owed sessions' among them, and no survivor's
sweep of dead instances knew of those sessions: they stayed ``active`` until some later
attach. The heartbeat records the sessions it owes again first (orphans.lua ``hold``):
a survivor parks them.

Real processes throughout: a redis-server stopped and started again on its port, the
owing instance reaching it through tests/proxies.py's proxy, which withholds its parks
(so that it cannot write them before it is killed, however the machine schedules it),
and a second instance on Redis itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.redis.layout import Layout
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess
from tests.test_redis_owed_at_stop import (
    RETENTION,
    a_survivor,
    attached,
    events,
    http_text,
    listed,
    served_through,
)

SESSIONS = 5
HEARTBEAT = 2  # seconds: the owing instance's entries lapse within the outage
# What presence.lua's park mode carries among its arguments, as RESP sends it.
PARK_MARKER = b"$4\r\npark\r\n"


# Parked actors that keep their unwritten state in memory, not looking again in the
# test's time (their look would write it), rather than retire owing it.
KEPT = ("--disconnect-retention", "600", "--idle-timeout", "600")


def gauge(port: int, name: str) -> float:
    for line in http_text(port, "/metrics").splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def owing(port: int, retired: bool) -> bool:
    """Every session of the test owes its park: its actor retired (only the keeper's
    is live), or is parked."""
    if retired:
        return gauge(port, "bamboo_live_actors") == 1
    return gauge(port, "bamboo_parked_actors") == SESSIONS


@pytest.mark.parametrize("owed_by", ["retired actors", "parked actors"])
async def test_states_owed_at_a_kill_right_after_redis_returns_are_parked_by_a_survivor(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, owed_by: str
) -> None:
    """Owed by the queue of retired actors' states, or by parked actors still live."""
    retired = owed_by == "retired actors"
    options = RETENTION if retired else KEPT
    redis_server = start_redis("redis")
    proxy = RedisProxy(redis_server.port)
    owing_server = await served_through(proxy, tmp_path, "owing", HEARTBEAT, *options)
    reader = redis.asyncio.Redis.from_url(redis_server.url())
    ids = [f"owed-{n}" for n in range(SESSIONS)]
    survivor: ServerProcess | None = None
    try:
        # A session attached throughout: the instance keeps refreshing its presence.
        keeper = await attached(owing_server, "keeper")
        peers = [await attached(owing_server, session_id) for session_id in ids]
        redis_server.stop()
        stopped = time.monotonic()
        for peer in peers:
            await peer.close()
        await eventually(lambda: asyncio.to_thread(owing, owing_server.port, retired), timeout=30)
        # The outage outlasts the heartbeat: the sessions' entries are past their deadline.
        await eventually(lambda: time.monotonic() - stopped > HEARTBEAT * 1.5, timeout=30)
        proxy.withhold(PARK_MARKER)  # its owed parks (and its sweeps') never reach Redis
        await redis_server.start_in_loop()
        await eventually(lambda: events(owing_server, "presence heartbeat works again"), timeout=30)
        owing_server.kill()
        layout = Layout(prefix_for(tmp_path))
        states = [await reader.hget(layout.meta(session_id), "state") for session_id in ids]
        assert states == [b"active"] * SESSIONS  # owed still: not written before the kill
        await keeper.close()

        survivor = await a_survivor(redis_server, tmp_path, HEARTBEAT)
        port = survivor.port

        def all_parked() -> bool:
            return set(ids) <= listed(port, "disconnected")

        # A heartbeat after the killed one's last refresh, and the survivor's sweep.
        await eventually(lambda: asyncio.to_thread(all_parked), timeout=30)
        assert await asyncio.to_thread(listed, port, "active") == set()
    finally:
        owing_server.kill()
        if survivor is not None:
            survivor.stop()
        await reader.aclose()
        await proxy.close()
