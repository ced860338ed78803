"""A restart of a Redis that may lose writes, met by actors still live on two
instances (real redis-servers, killed and started again; see
tests/test_redis_lossy_epoch.py): a resume under the old epoch is not served from an
actor's memory, and the viewers of the old log are told to resume (1012), not that
the session is gone (4404), whichever look of the instance finds the change first."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

from tests.redis_lossy_support import (
    CHANGED,
    attached,
    lossy_redis,
    publish,
    ten_events_five_in_the_snapshot,
    two_servers,
)
from tests.redis_server import RedisServer, prefix_for
from tests.support import attach


async def test_live_actors_meet_a_lossy_restart_with_resumes_refused_and_1012(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """An agent on the first instance, a viewer on the second, 10 events of which
    Redis's snapshot keeps 5; Redis is down long enough for the listeners to wait
    between attempts. The agent resumes on the first from seq 5 with the old epoch:
    ``resumed: false`` and ``last_seq`` 5 (not 10, from its actor's ring), then takes
    seq 6. A client that saw the lost seq 6 resumes on the second: ``resumed:
    false``. The viewer of the old log is closed with 1012."""
    server = lossy_redis(start_redis)
    url = server.url(prefix=prefix_for(tmp_path), accept_lossy="true")
    async with two_servers(url) as (a, b):
        async with (
            attach(a, "s", create=True, role="agent") as (agent, welcome),
            attach(b, "s", last_seq=0) as (viewer, _),
        ):
            old = welcome["epoch"]
            await ten_events_five_in_the_snapshot(server, agent, viewer)
            server.stop(signal.SIGKILL)
            await asyncio.sleep(1.5)  # setup, not a measure: the listeners back off
            server.start()
            async with attached(a, "s", last_seq=5, epoch=old) as (again, resumed):
                assert (resumed["resumed"], resumed["last_seq"]) == (False, 5)
                assert resumed["epoch"] != old
                assert await publish(again, 1, 10) == [6]
                async with attached(b, "s", last_seq=6, epoch=old) as (_, other):
                    assert (other["resumed"], other["last_seq"]) == (False, 6)
            await viewer.closed()
            assert (viewer.ws.close_code, viewer.ws.close_reason) == (1012, CHANGED)
