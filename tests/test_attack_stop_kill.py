"""A graceful stop of a real ``serve`` on a JSONL store cut short by SIGKILL at some
instant of it (before the park of what it leaves attached, during it, during the
close's checkpoints), or sent a second SIGTERM (server/restart_park.py
``park_at_stop``, server/manager.py ``close``): the next start finds every
acknowledged event, no session left ``active`` or ``idle``, and logs no error.

The kill instants are spread over a stop of 40 attached sessions on this machine
(0.1-0.3 s unloaded: the park's line is logged from about 0.05 s on); where each lands
varies with the load, and each round's store carries every round's sessions before it.
Real server processes, a real store in a temp dir."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.server_process import ServerProcess, assert_no_tracebacks

SESSIONS = 40
EVENTS = 2


async def attached(
    server: ServerProcess, session_id: str, acked: dict[str, int]
) -> ClientConnection:
    ws = await connect(server.url(session_id), open_timeout=30)
    await ws.send(json.dumps({"type": "hello", "create": True}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
    for number in range(1, EVENTS + 1):
        event = {"type": "token", "content": f"{session_id} {number}"}
        await ws.send(json.dumps({"type": "event", "id": number, "event": event}))
        while (answer := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "ack":
            assert answer["type"] != "error", answer
        acked[session_id] = number
    return ws


def read(server: ServerProcess, path: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{path}"
    with urllib.request.urlopen(url, timeout=30) as answer:
        found: dict[str, Any] = json.loads(answer.read())
    return found


def stop_cut(server: ServerProcess, cut: float | str) -> None:
    """SIGTERM, then SIGKILL ``cut`` seconds later (if it still runs), or, for
    ``"twice"``, a second SIGTERM (which ends the stop at once, server/stop_bounds.py)
    and the exit waited for."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    if cut == "twice":
        server.proc.send_signal(signal.SIGTERM)
        # 143: the second came once the stop began, and ended it at once (as a kill).
        assert server.proc.wait(60) in (0, 128 + signal.SIGTERM)
        return
    assert isinstance(cut, float)
    time.sleep(cut)  # the instant of the kill: what is tried, not a wait for something
    server.kill()


@pytest.mark.parametrize("cuts", [[0.0, 0.03, 0.08, 0.15, 0.3, "twice"]])
async def test_a_stop_cut_short_at_any_instant_loses_nothing(
    tmp_path: Path, cuts: list[float | str]
) -> None:
    data = tmp_path / "data"
    acked: dict[str, int] = {}
    for round_number, cut in enumerate(cuts):
        server = ServerProcess(data, tmp_path / f"stopped{round_number}.log")
        await server.start_in_loop()
        try:
            ids = [f"r{round_number}-{n}" for n in range(SESSIONS)]
            peers = await asyncio.gather(*(attached(server, i, acked) for i in ids))
            stop_cut(server, cut)
        finally:
            server.kill()
        for peer in peers:
            peer.transport.abort()  # the server is gone: no close handshake to wait for

        checker = ServerProcess(data, tmp_path / f"check{round_number}.log")
        await checker.start_in_loop()
        try:
            for session_id, count in acked.items():
                log = await asyncio.to_thread(read, checker, f"{session_id}/events?after_seq=0")
                contents = [record["event"]["content"] for record in log["events"]]
                assert contents == [f"{session_id} {n}" for n in range(1, count + 1)], log
                metadata = (await asyncio.to_thread(read, checker, session_id))["metadata"]
                assert metadata["state"] == "disconnected", (cut, metadata)
        finally:
            assert checker.stop() == 0
        assert_no_tracebacks(checker.log_records())
        assert_no_tracebacks(server.log_records())
