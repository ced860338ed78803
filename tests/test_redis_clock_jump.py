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
event loop runs again: as early as a look the jump fired can come (skipped without
libfaketime: apt-get install faketime). A real redis-server on the real clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.faketime_support import LIBFAKETIME, needs_libfaketime
from tests.redis_server import RedisServer, prefix_for

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
