"""An open connection does not outlive its token when the server's wall clock steps
forward past the token's ``exp`` (server/token_expiry.py): its close was a timer set at
the ``hello`` for the seconds left then, on the monotonic clock, which the step did not
move, and the connection stayed open that long past ``exp`` (bench/clock_jump.py).

The server runs in a child process under libfaketime, its wall clock read from a file
the test rewrites (skipped without it: apt-get install faketime), and is stopped
gracefully an hour on (tests/faketime_support.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.token_expiry import LOOK
from tests.auth_support import SECRET, make_token
from tests.faketime_support import needs_libfaketime, set_offset, under_faketime
from tests.server_process import ServerProcess, assert_no_tracebacks

pytestmark = needs_libfaketime


async def test_a_step_of_the_clock_past_the_tokens_exp_closes_the_connection(
    tmp_path: Path,
) -> None:
    offset = tmp_path / "offset"
    set_offset(offset, 0)
    flags = ("--store", "memory://", "--auth-secret", SECRET, "--auth-leeway", "0")
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", *flags)
    settings = {"FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    await under_faketime(server, **settings).start_in_loop()
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
        assert await asyncio.to_thread(server.stop) == 0  # a graceful stop, an hour on
    assert_no_tracebacks(server.log_records())
