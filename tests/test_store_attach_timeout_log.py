"""A ``hello`` the store does not answer within ``--store-read-timeout`` is closed 1011
``storage unavailable``, and the server's log says why: ``storage failed`` (command
``Hello``, the error ``no answer from the store within 1 s``) at the first of an
outage, the later ones counted in a ``storage failing`` line (here at the stop), as
the store's other failed commands are (server/command_failures.py). Before, the log
said nothing at all: an operator saw closes 1011 with no cause.

A real ``bamboo-session serve`` (its log is read from its file) on a real redis-server
behind a proxy that holds back the reply to the hello's read of its session."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks

DEADLINE = "1"  # --store-read-timeout, seconds
HELLOS = 3  # given up on, one after the other
CLOSE_WAIT = 30.0  # seconds a close may take on a loaded machine (the deadline is 1 s)


async def hello_given_up(server: ServerProcess, proxy: RedisProxy, session_id: str) -> None:
    """A ``hello`` that creates ``session_id``, whose read of it the proxy holds: closed
    1011 ``storage unavailable``; the held reply then goes through."""
    held = proxy.replies_held
    proxy.hold_reply_to(session_id.encode())
    try:
        async with connect(server.url(session_id), open_timeout=CLOSE_WAIT) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            async with asyncio.timeout(CLOSE_WAIT):
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.recv()
            assert proxy.replies_held > held
            assert (ws.close_code, ws.close_reason) == (1011, "storage unavailable")
    finally:
        proxy.release_replies()


async def test_a_hello_given_up_on_at_its_deadline_is_logged_once_then_counted(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    store = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
    flags = ("--store", store, "--store-read-timeout", DEADLINE)
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", *flags)
    try:
        await server.start_in_loop()
        for index in range(HELLOS):
            await hello_given_up(server, proxy, f"slow-{index}")
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        server.kill()
        await proxy.close()
    records = server.log_records()
    assert_no_tracebacks(records)
    failed = [record for record in records if record["event"] == "storage failed"]
    assert len(failed) == 1, failed  # the first of the outage, not one per hello
    assert failed[0]["level"] == "warning"
    assert failed[0]["command"] == "Hello"
    assert failed[0]["error"] == f"no answer from the store within {DEADLINE} s"
    failing = [record for record in records if record["event"] == "storage failing"]
    assert [record["commands"] for record in failing] == [{"Hello": HELLOS - 1}], failing
