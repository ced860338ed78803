"""A ``serve`` on Redis that owes ``disconnected`` to sessions parked while Redis was
away (server/owed_states.py), stopped just after Redis came back: SIGTERM, so that
the stop's last round writes them, then SIGKILL a moment later, in that round or
before it (or a second SIGTERM). Whatever the round wrote or left, a survivor lists
every session ``disconnected`` within a bounded wait (its dead-instance sweep parks
the rest), none ``active`` or ``idle``, and logs no error.

Real processes: a redis-server stopped and started again on its port with its
append-only file, ``serve`` processes signalled by pid."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.instances import eventually
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_redis_owed_at_stop import listed, owing_after_an_outage

SESSIONS = 20


@pytest.mark.parametrize("cut", [0.0, 0.02, 0.1, "twice"])
async def test_a_stop_killed_in_its_last_round_of_owed_states_leaves_none_attached(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, cut: float | str
) -> None:
    redis = start_redis("redis")
    options, first, ids = await owing_after_an_outage(redis, tmp_path, SESSIONS)
    try:
        await redis.start_in_loop()
        assert first.proc is not None
        first.proc.send_signal(signal.SIGTERM)
        if cut == "twice":
            first.proc.send_signal(signal.SIGTERM)
            # 143: the second came once the stop began, and ended it at once (as a kill).
            assert await asyncio.to_thread(first.proc.wait, 60) in (0, 128 + signal.SIGTERM)
        else:
            assert isinstance(cut, float)
            await asyncio.sleep(cut)  # the instant of the kill: what is tried, not a wait
            first.kill()
        assert_no_tracebacks(first.log_records())

        survivor = ServerProcess(tmp_path / "second", tmp_path / "second.log", *options)
        await survivor.start_in_loop()
        try:

            def all_parked() -> bool:
                return listed(survivor.port, "disconnected") == set(ids)

            await eventually(lambda: asyncio.to_thread(all_parked), timeout=30)
            assert await asyncio.to_thread(listed, survivor.port, "active") == set()
            assert await asyncio.to_thread(listed, survivor.port, "idle") == set()
        finally:
            assert survivor.stop() == 0
        assert_no_tracebacks(survivor.log_records())
    finally:
        first.kill()
