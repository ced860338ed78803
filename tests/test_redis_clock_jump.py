"""A Redis store's clock (persistence/redis/clock.py) when one of this machine's clocks
jumps: the reading of Redis's ``TIME`` was carried by the monotonic clock alone, so
with that clock 2 h on (a VM resumed: bench/clock_jump.py --monotonic) a look the jump
fired, run before the next reading, took a live session of a one-hour TTL for expired
and closed its peer 4404 ``session expired`` while Redis held it alive. Expiry never
comes early now for one local clock's jump (nor both together past the reading's
age); a step back of the wall clock shows for no more than a reading's round trip, and
no session is stamped behind by it.

The store runs in a child process (tests/redis_clock_jump_child.py) under libfaketime,
its clocks moved by a file it rewrites itself, so that the judgment comes before its
event loop runs again: as early as a look the jump fired can come; and ``serve`` runs
under it with peers attached, its clocks moved by the test, and stopped gracefully
(skipped without libfaketime: apt-get install faketime). A real redis-server on the
real clock."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.faketime_support import LIBFAKETIME, needs_libfaketime, set_offset, under_faketime
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_redis_clock_skew import hello, read, request

pytestmark = needs_libfaketime
CHILD = Path(__file__).with_name("redis_clock_jump_child.py")
CLOSE = timedelta(seconds=1)  # as near Redis's clock as a reading is, and then some


def judged_after_a_jump(
    tmp_path: Path, redis_server: RedisServer, jump: int, monotonic: bool
) -> dict[str, str | bool]:
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        # "0": the monotonic clock moves with the wall clock (a VM whose clocks counted
        # its pause); "1": the wall clock alone (an NTP step, a clock set by hand).
        "FAKETIME_DONT_FAKE_MONOTONIC": "0" if monotonic else "1",
    }
    url = redis_server.url(prefix=prefix_for(tmp_path))
    done = subprocess.run(
        [sys.executable, str(CHILD), url, str(offset), str(jump)],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    found: dict[str, str | bool] = json.loads(done.stdout.decode().splitlines()[-1])
    return found


def time_of(found: dict[str, str | bool], name: str) -> datetime:
    return datetime.fromisoformat(str(found[name]))


@pytest.mark.parametrize(
    ("jump", "monotonic"),
    [(7200, True), (7200, False), (-3600, False)],
    ids=["both-clocks-2h-on", "wall-2h-on", "wall-1h-back"],
)
def test_a_session_is_not_judged_expired_early_after_a_local_clock_jump(
    tmp_path: Path, redis_server: RedisServer, jump: int, monotonic: bool
) -> None:
    found = judged_after_a_jump(tmp_path, redis_server, jump, monotonic)
    assert found["expired"] is False, found  # Redis holds it alive for an hour
    assert time_of(found, "now") <= time_of(found, "redis_after") + CLOSE, found  # not early
    # A session given Redis's times right after the jump keeps them: not moved by the
    # store to a clock the jump left behind (an hour behind, a TTL of an hour: expired).
    kept, given = time_of(found, "imported_updated_at"), time_of(found, "imported_given")
    assert abs(kept - given) <= CLOSE, found


async def test_served_sessions_outlive_a_jump_of_both_of_the_servers_clocks(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """What peers saw (bench/clock_jump.py --monotonic, h369): ``serve`` with both its
    clocks 2 h on, a peer on a session of a one-hour TTL was closed 4404 ``session
    expired`` by the look the jump fired, though Redis held the session alive. A race
    of that look with the next reading of Redis's clock (which the jump brought on
    too), so several sessions: before the fix, some of the looks ran first in most runs
    (tests/redis_clock_jump_child.py shows the clock itself, every time)."""
    offset = tmp_path / "offset"
    set_offset(offset, 0)
    url = redis_server.url(prefix=prefix_for(tmp_path))
    flags = ("--store", url, "--default-ttl", "3600", "--idle-timeout", "0.5")
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", *flags)
    settings = {"FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    under_faketime(server, **settings, FAKETIME_DONT_FAKE_MONOTONIC="0")
    await server.start_in_loop()
    ids = [f"s{n}" for n in range(SESSIONS)]
    try:
        peers = [await hello(server, session_id, create=True) for session_id in ids]
        await eventually(lambda: all_idle(server, ids), timeout=10)  # looks at work
        set_offset(offset, 7200)
        for n, peer in enumerate(peers, 1):
            frame = {"type": "event", "id": n, "event": {"type": "token", "content": "x"}}
            assert await request(peer, frame) == {"type": "ack", "id": n, "seq": 1}
        await eventually(lambda: all_idle(server, ids), timeout=10)  # looks since
        for peer in peers:
            assert await request(peer, {"type": "ping", "id": 0}) == {"type": "pong", "id": 0}
            await peer.close()
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert_no_tracebacks(server.log_records())


SESSIONS = 6


async def all_idle(server: ServerProcess, ids: list[str]) -> bool:
    for session_id in ids:
        status, metadata = await asyncio.to_thread(read, server, session_id)
        assert status == 200 and metadata is not None, status  # alive, by Redis's clock
        if metadata["state"] != "idle":
            return False
    return True
