"""An open connection does not outlive its token when the server's wall clock steps
forward past the token's ``exp`` (server/token_expiry.py): its close was a timer set at
the ``hello`` for the seconds left then, on the monotonic clock, which the step did not
move, and the connection stayed open that long past ``exp`` (bench/clock_jump.py).

The server runs in a child process under libfaketime, its wall clock read from a file
the test rewrites (skipped without it: apt-get install faketime)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.token_expiry import LOOK
from tests.auth_support import SECRET, make_token
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_redis_clock_skew import LIBFAKETIME

pytestmark = pytest.mark.skipif(
    LIBFAKETIME is None, reason="needs libfaketime (apt-get install faketime)"
)


def set_offset(path: Path, seconds: int) -> None:
    spare = path.with_suffix(".new")  # written whole: the library reads it at every call
    spare.write_text(f"{seconds:+d}\n")
    spare.replace(path)


async def test_a_step_of_the_clock_past_the_tokens_exp_closes_the_connection(
    tmp_path: Path,
) -> None:
    offset = tmp_path / "offset"
    set_offset(offset, 0)
    flags = ("--store", "memory://", "--auth-secret", SECRET, "--auth-leeway", "0")
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", *flags)
    server.env = {
        **os.environ,
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    await server.start_in_loop()
    try:
        async with connect(server.url("s"), open_timeout=10) as ws:
            token = make_token("alice", ttl=600)  # ten minutes left, by every clock
            await ws.send(json.dumps({"type": "hello", "token": token, "create": True}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            set_offset(offset, 3600)  # an hour on: the token expired 50 minutes ago
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # closed within LOOK (10 s); it stayed open the ten minutes
                    await asyncio.wait_for(ws.recv(), 12 * LOOK)
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4401, "token expired")
    finally:
        server.kill()
    assert_no_tracebacks(server.log_records())
