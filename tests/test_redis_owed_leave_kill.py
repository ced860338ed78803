"""A ``serve`` process on Redis killed while its last peer's leave of a session, or the
park that follows it, is under way (Redis slow to answer it, the heartbeat's calls
answered): a survivor parks the session.

The heartbeat's refresh drops the process's own presence entries past their deadline,
and records again only the connections it holds and the sessions it owes. A session
whose leave, then park, was under way was neither: out of the connections held as the
leave began, owed only once the park failed. A refresh meanwhile, a heartbeat after the
session's last one, dropped its entry, and a kill before the next heartbeat left it
``active`` with no survivor's sweep knowing of it. Now the sessions whose leave is under
way are recorded with those owed (server/presence.py), and a park under way is owed
(server/status.py).

Real processes throughout: a redis-server, the killed instance reaching it through
tests/proxies.py's proxy, which withholds the leave (and the park's state write), and a
second instance on Redis itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence.redis.layout import Layout
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess
from tests.test_redis_owed_at_kill import KEPT
from tests.test_redis_owed_at_stop import a_survivor, attached, listed, served_through

HEARTBEAT = 2  # seconds; redis-py gives up on a withheld call after 10
# What presence.lua's leave carries among its arguments, and state.lua's write of a park.
LEAVE_MARKER = b"$5\r\nleave\r\n"
PARK_MARKER = b"$12\r\ndisconnected\r\n"


async def entry_score(reader: redis.asyncio.Redis, layout: Layout, session_id: str) -> float | None:
    """The deadline (ms) of the only instance's entry of the session, None if none."""
    (instance,) = await reader.zrange(layout.instances(), 0, -1)
    entries = await reader.zrange(
        layout.instance_sessions(instance.decode()), 0, -1, withscores=True
    )
    scores = [score for entry, score in entries if entry.decode().split(" ")[0] == session_id]
    return max(scores, default=None)


@pytest.mark.parametrize("under_way", ["leave", "park"])
async def test_a_kill_while_a_session_is_left_leaves_it_to_a_survivor(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, under_way: str
) -> None:
    redis_server = start_redis("redis")
    layout = Layout(prefix_for(tmp_path))
    proxy = RedisProxy(redis_server.port)
    killed = await served_through(proxy, tmp_path, "killed", HEARTBEAT, *KEPT)
    reader = redis.asyncio.Redis.from_url(redis_server.url())
    survivor: ServerProcess | None = None
    try:
        # A session attached throughout: the instance keeps refreshing its presence.
        keeper = await attached(killed, "keeper")
        peer = await attached(killed, "left")
        proxy.withhold(LEAVE_MARKER, PARK_MARKER)
        await peer.close()
        # The leave withheld; for "park", until redis-py gives it up, and the park sent.
        withheld = 1 if under_way == "leave" else 2
        await eventually(lambda: proxy.withheld >= withheld, timeout=30)
        left_by = await entry_score(reader, layout, "left")
        if left_by is not None:
            # A refresh of the keeper's session after that deadline: it drops entries
            # past theirs.
            hb_ms = HEARTBEAT * 1000

            async def refreshed_after() -> bool:
                keeper_by = await entry_score(reader, layout, "keeper")
                return keeper_by is not None and keeper_by - hb_ms > left_by

            await eventually(refreshed_after, timeout=30)
        assert proxy.withheld == withheld  # still under way
        killed.kill()
        assert await reader.hget(layout.meta("left"), "state") == b"active"
        await keeper.close()

        survivor = await a_survivor(redis_server, tmp_path, HEARTBEAT)
        port = survivor.port
        # A heartbeat after the killed one's last refresh, and the survivor's sweep.
        await eventually(
            lambda: asyncio.to_thread(lambda: "left" in listed(port, "disconnected")), timeout=30
        )
    finally:
        killed.kill()
        if survivor is not None:
            survivor.stop()
        await reader.aclose()
        await proxy.close()
