"""What peers were told before a stop whose store close was left at its bound (the WAL
sync helper held by SIGSTOP while an append waits on its sync) holds at the next
start: a session closed by an acknowledged ``state: closed`` stays closed (4409), an
acknowledged keyed append answers its retry as a duplicate of the same seq, an
acknowledged ``message`` is in the history, and an unacknowledged append retried after
the restart is stored once, whether or not the disk kept it; the next open finds
nothing damaged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.test_jsonl_stop_stuck_disk import HANG_GUARD, sync_helper_of, until

STUCK, CLOSED = "stuck", "done"


def keyed(number: int) -> str:
    payload = {"type": "token", "content": f"event {number}"}
    return json.dumps({"type": "event", "id": number, "key": f"k{number}", "event": payload})


async def attach(server: ServerProcess, session: str, create: bool) -> ClientConnection:
    ws = await connect(server.url(session), open_timeout=30)
    await ws.send(json.dumps({"type": "hello", "create": create}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
    return ws


async def answer(ws: ClientConnection, frame: str) -> dict[str, Any]:
    await ws.send(frame)
    while (reply := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] not in (
        "ack",
        "error",
    ):
        pass
    return reply  # type: ignore[no-any-return]


async def append_held(helper: int, ws: ClientConnection, data: Path, number: int) -> None:
    """The sync helper stopped (SIGSTOP), then event ``number`` sent to ``STUCK``: back
    once its line is written, its sync waiting (the writer writes before it syncs)."""
    os.kill(helper, signal.SIGSTOP)
    await ws.send(keyed(number))
    log = data / "events" / f"{STUCK}.jsonl"
    line = f"event {number}".encode()
    await until(lambda: line in log.read_bytes(), "the unsynced append's write")


def stored(server: ServerProcess, session: str) -> list[tuple[int, str]]:
    url = f"http://127.0.0.1:{server.port}/api/v1/sessions/{session}/events?after_seq=0"
    with urllib.request.urlopen(url, timeout=30) as reply:
        found = json.loads(reply.read())
    return [(r["seq"], r["event"].get("content", "")) for r in found["events"]]


async def test_what_peers_were_told_holds_after_a_stop_past_its_store_bound(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log", "--shutdown-grace", "1")
    server.env = {**os.environ, "BAMBOO_STORE_CLOSE_TIMEOUT": "2"}
    await server.start_in_loop()
    assert server.proc is not None
    helper = sync_helper_of(server.proc.pid)
    try:
        done = await attach(server, CLOSED, create=True)
        assert (await answer(done, keyed(1)))["seq"] == 1
        closing = await answer(done, json.dumps({"type": "state", "id": 9, "state": "closed"}))
        assert closing["type"] == "ack", closing
        ws = await attach(server, STUCK, create=True)
        for number in (1, 2, 3):
            assert (await answer(ws, keyed(number)))["seq"] == number
        said = {"type": "message", "id": 7, "message": {"role": "user", "content": "hi"}}
        assert (await answer(ws, json.dumps(said)))["seq"] == 4
        await append_held(helper, ws, data, 5)
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, HANG_GUARD) == 1
    finally:
        server.kill()
        os.kill(helper, signal.SIGCONT)

    again = ServerProcess(data, tmp_path / "again.log")
    await again.start_in_loop()
    try:
        ws = await attach(again, STUCK, create=False)
        for number in (1, 2, 3):
            retry = await answer(ws, keyed(number))
            assert (retry["seq"], retry.get("duplicate")) == (number, True), retry
        assert (await answer(ws, keyed(5)))["seq"] == 5
        assert (await answer(ws, keyed(6)))["seq"] == 6
        await ws.send(json.dumps({"type": "history", "id": 8}))
        while (history := json.loads(await asyncio.wait_for(ws.recv(), 30)))["id"] != 8:
            pass
        assert [m["content"] for m in history["messages"]] == ["hi"], history
        events = stored(again, STUCK)
        assert [seq for seq, _ in events] == list(range(1, 7))
        assert [text for seq, text in events if seq != 4] == [f"event {n}" for n in (1, 2, 3, 5, 6)]
        late = await connect(again.url(CLOSED), open_timeout=30)
        await late.send(json.dumps({"type": "hello"}))
        try:
            while True:
                await asyncio.wait_for(late.recv(), 30)
        except ConnectionClosed:
            pass
        assert late.close_code == 4409
        await ws.close()
    finally:
        assert again.stop(HANG_GUARD) == 0
    assert_no_tracebacks(again.log_records())
    assert not [p for p in data.rglob("*") if "damaged" in p.name]


async def test_a_second_signal_while_the_sessions_close_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    """The second SIGTERM in the stop's first phase (the sessions closing, their actors
    held by the stuck sync): 143 at once, the phase named, and the next open has every
    acknowledged event, the retry of the unacknowledged one stored once, nothing
    damaged."""
    data = tmp_path / "data"
    server = ServerProcess(data, tmp_path / "server.log", "--shutdown-grace", "30")
    await server.start_in_loop()
    assert server.proc is not None
    helper = sync_helper_of(server.proc.pid)
    try:
        ws = await attach(server, STUCK, create=True)
        for number in (1, 2, 3):
            assert (await answer(ws, keyed(number)))["seq"] == number
        await append_held(helper, ws, data, 4)
        server.proc.send_signal(signal.SIGTERM)
        await until(lambda: b"shutting down" in server.log_path.read_bytes(), "the stop")
        server.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.proc.wait, HANG_GUARD) == 128 + signal.SIGTERM
        second = [r for r in server.log_records() if r.get("event", "").startswith("a second")]
        assert [r["phase"] for r in second] == ["closing the sessions"], server.log_tail()
    finally:
        server.kill()
        os.kill(helper, signal.SIGCONT)

    again = ServerProcess(data, tmp_path / "again.log")
    await again.start_in_loop()
    try:
        ws = await attach(again, STUCK, create=False)
        assert (await answer(ws, keyed(4)))["seq"] == 4
        assert stored(again, STUCK) == [(n, f"event {n}") for n in range(1, 5)]
        await ws.close()
    finally:
        assert again.stop(HANG_GUARD) == 0
    assert_no_tracebacks(again.log_records())
    assert not [p for p in data.rglob("*") if "damaged" in p.name]
