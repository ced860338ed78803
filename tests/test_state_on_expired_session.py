"""A ``state`` request on a session that has expired since its peer attached, before
the server's look at it noticed: the store refuses the move, and the request gets
``not_found`` (docs/protocol.md, Session states: requests on an expired session get
``not_found``), the session's state and connections as they were. The state was kept
in memory instead, and the request answered as done (an ``ack``, its connections closed
1000 for a close the store never took), or, where the read of the last seq that builds
the ack then failed (the session removed meanwhile), ``not_found`` or ``internal``
while the session was held moved, closed even, here.

A real server with a JSONL store in a child process under libfaketime (skipped
without it: apt-get install faketime): its wall clock, which the store's expiry is
judged by, stepped past the session's TTL; its monotonic clock, which its looks run
on, left alone, so no look comes meanwhile."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.faketime_support import needs_libfaketime, set_offset, under_faketime
from tests.server_process import ServerProcess, assert_no_tracebacks

pytestmark = needs_libfaketime


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    while True:
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if answer.get("id") == frame["id"]:
            return answer


async def server_an_hour_ttl(tmp_path: Path, offset: Path) -> ServerProcess:
    """A started server whose sessions live an hour, its clock offset read from
    ``offset`` (0 to begin with)."""
    set_offset(offset, 0)
    server = ServerProcess(tmp_path / "data", tmp_path / "serve.log", "--default-ttl", "3600")
    settings = {"FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    await under_faketime(server, **settings).start_in_loop()
    return server


async def test_a_state_request_on_an_expired_session_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    offset = tmp_path / "offset"
    server = await server_an_hour_ttl(tmp_path, offset)
    try:
        async with connect(server.url("s"), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            event = {"type": "event", "id": 1, "event": {"type": "token", "content": "x"}}
            assert (await request(ws, event))["type"] == "ack"
            set_offset(offset, 7200)  # two hours on: expired an hour ago, no look yet
            for state in ("closed", "idle"):
                answer = await request(ws, {"type": "state", "id": state, "state": state})
                assert (answer["type"], answer.get("code")) == ("error", "not_found"), answer
            # Not closed for a close the store never took: open until the look's 4404.
            assert (await request(ws, {"type": "ping", "id": "p"}))["type"] == "pong"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert_no_tracebacks(server.log_records())


async def test_a_state_request_for_the_state_it_has_on_an_expired_session_is_refused(
    tmp_path: Path,
) -> None:
    """The same for a move to the state the session has (``active``, no write): it was
    acknowledged, with the last seq read, as if the session lived, where every other
    request on it gets ``not_found``."""
    offset = tmp_path / "offset"
    server = await server_an_hour_ttl(tmp_path, offset)
    try:
        async with connect(server.url("s"), open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            live = await request(ws, {"type": "state", "id": "live", "state": "active"})
            assert live["type"] == "ack", live  # (the session lives: acknowledged)
            set_offset(offset, 7200)  # two hours on: expired an hour ago, no look yet
            answer = await request(ws, {"type": "state", "id": "same", "state": "active"})
            assert (answer["type"], answer.get("code")) == ("error", "not_found"), answer
            assert (await request(ws, {"type": "ping", "id": "p"}))["type"] == "pong"
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    assert_no_tracebacks(server.log_records())
