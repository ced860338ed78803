"""A ``hello`` closed 1011 ``storage failed; retry later`` because the store raised
(Redis refusing connections) is told in the server's log exactly once an outage, then
counted, as the store's other failed commands are (server/command_failures.py): the
hello's own reads (the user's connection count on Redis, a creation's reads) under
command ``Hello``; an attach or a creation's write, which tell their own failures
(``Attach``, ``Create``), not a second time at the hello. Before, a hello whose own
read failed logged only "connection closed": an operator saw closes 1011 with no cause.

A real ``bamboo-session serve`` (its log is read from its file) on a real redis-server
behind a proxy that refuses new connections once the open ones are reset."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.server_process import ServerProcess, assert_no_tracebacks

CLOSE_WAIT = 30.0  # seconds a close may take on a loaded machine
HELLOS = 3  # of each kind, one after the other, all in one outage


async def closed_by_hello(
    server: ServerProcess, session_id: str, hello: dict[str, Any]
) -> tuple[int | None, str | None]:
    """The close code and reason of a connection to ``session_id`` that sent ``hello``."""
    async with connect(server.url(session_id), open_timeout=CLOSE_WAIT) as ws:
        await ws.send(json.dumps({"type": "hello", **hello}))
        async with asyncio.timeout(CLOSE_WAIT):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await ws.recv()
    return ws.close_code, ws.close_reason


async def created(server: ServerProcess, session_id: str) -> None:
    """``session_id`` created by a hello, whose connection then closes."""
    async with connect(server.url(session_id), open_timeout=CLOSE_WAIT) as ws:
        await ws.send(json.dumps({"type": "hello", "create": True}))
        async with asyncio.timeout(CLOSE_WAIT):
            assert json.loads(await ws.recv())["type"] == "welcome"


async def test_each_hello_the_store_failed_is_told_once_an_outage(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    store = f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}"
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--store", store)
    hellos = [
        ("counted", {"user_id": "ada"}),  # the user's count on Redis fails first
        ("created", {"create": True}),  # the creation's reads fail
        ("existing", {}),  # the actor's attach fails (it tells it, "Attach")
    ]
    closes: list[tuple[int | None, str | None]] = []
    try:
        await server.start_in_loop()
        for name, _ in hellos:  # each session there (and let go) before the outage
            await created(server, name)
        proxy.refusing = True
        proxy.reset()
        for name, hello in hellos:
            for index in range(HELLOS):
                session_id = name if name != "created" else f"new-{index}"
                closes.append(await closed_by_hello(server, session_id, hello))
        assert await asyncio.to_thread(server.stop) == 0
    finally:
        server.kill()
        await proxy.close()
    assert set(closes) == {(1011, "storage failed; retry later")}, closes
    records = server.log_records()
    assert_no_tracebacks(records)
    failed = [record for record in records if record["event"] == "storage failed"]
    assert len(failed) == 1, failed  # the first of the outage, not one per hello
    told = {failed[0]["command"]: 1}
    for record in records:
        if record["event"] == "storage failing":
            for command, count in record["commands"].items():
                told[command] = told.get(command, 0) + count
    # Each 1011 once, under the command that failed: the hellos' own reads (the user's
    # count; a creation's reads before its write), the actor's attaches; none twice (no
    # Hello for an Attach). Before: {"Attach": 3}, six closes 1011 told nowhere. (The
    # sessions made before the outage may fail their Detach in it too.)
    told.pop("Detach", None)
    assert told == {"Hello": 2 * HELLOS, "Attach": HELLOS}, told
