"""SIGTERM to a real ``serve`` on a SQLite store while another process holds the
database's write lock (Python's sqlite3 left in ``BEGIN IMMEDIATE``, as the ``sqlite3``
shell would be) and a publisher's append waits for it.

The peers get ``closed`` and 1012 at the stop's grace, and their connections end then
(a websockets client reports its close only then): the server ends its stream right
behind the close frame. A peer that sent no ``hello`` yet gets its 1012 then too, not
after the park. The append waiting for the lock is never acknowledged; the
process exits 0 within the grace and the park's bound (the park's writes wait for the
lock too, and are given up at it). Before, the connections ended only with the process,
once the park gave up (3 s past the grace: h458's leftover); and before h458 the
store's close waited out SQLite's busy timeout (10 s) for each batch still queued (the
append's, the park's), and the exit with it, some 20 s after the signal. Once the lock
is gone, the next start has every acknowledged event, and the append sent again with
its key is stored exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bamboo_session.server.restart_park import STOP_BOUND
from tests.server_process import ServerProcess, assert_no_tracebacks
from tests.stalled_disks_support import write_lock_held

GRACE = 1.0  # --shutdown-grace
SLACK = 4.0  # seconds a loaded machine may add to a bound
# Seconds past the grace a peer's close may end at: the park's bound (3 s) is what a
# close that waits for the process's exit would take on top.
CLOSE_MARGIN = 1.5
HANG_GUARD = 60.0  # a wait still going then is taken for one that hangs
ACKED = 3
SESSION = "locked"
# What the server logs at error level here: the failed writes (the store's close failed
# the batches that waited for the lock), once per outage.
EXPECTED_ERRORS = ("a write to",)


def event(number: int) -> str:
    payload = {"type": "token", "content": f"event {number}"}
    return json.dumps({"type": "event", "id": number, "key": f"k{number}", "event": payload})


async def peer(server: ServerProcess, *, create: bool = False) -> ClientConnection:
    ws, _ = await welcomed(server, create=create)
    return ws


async def welcomed(server: ServerProcess, **hello: Any) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(server.url(SESSION), open_timeout=30)
    await ws.send(json.dumps({"type": "hello", **hello}))
    while (welcome := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "welcome":
        pass
    return ws, welcome


async def acked(ws: ClientConnection, number: int) -> dict[str, Any]:
    await ws.send(event(number))
    while (answer := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "ack":
        assert answer["type"] in ("presence", "event"), answer
    assert answer["id"] == number, answer
    return answer


async def told(ws: ClientConnection, started: list[float]) -> tuple[list[Any], int | None, float]:
    """Every frame the peer gets from now on, with the seconds since ``started[0]``
    it came at; the close code, and when the connection ended."""
    frames: list[Any] = []
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            frames.append((json.loads(message), time.monotonic() - started[0]))
    return frames, ws.close_code, time.monotonic() - started[0]


async def test_a_sigterm_while_another_process_holds_the_write_lock_stops_in_its_bounds(
    tmp_path: Path,
) -> None:
    db = tmp_path / "sessions.db"
    store = f"sqlite://{db}"
    grace = ("--shutdown-grace", str(GRACE))
    server = ServerProcess(tmp_path / "data", tmp_path / "server.log", "--store", store, *grace)
    await server.start_in_loop()
    assert server.proc is not None
    try:
        publisher = await peer(server, create=True)
        viewer, welcome = await welcomed(server)
        epoch = welcome["epoch"]
        for number in range(1, ACKED + 1):
            await acked(publisher, number)
        silent = await connect(server.url(SESSION), open_timeout=30)  # no hello yet
        async with write_lock_held(db):
            await publisher.send(event(ACKED + 1))
            await asyncio.sleep(0.3)  # its append waits for the lock
            started = [time.monotonic()]
            peers = (publisher, viewer, silent)
            hearing = [asyncio.ensure_future(told(ws, started)) for ws in peers]
            server.proc.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(server.proc.wait, HANG_GUARD)
            exited = time.monotonic() - started[0]
            heard = [await asyncio.wait_for(one, HANG_GUARD) for one in hearing]
        assert status == 0
        assert exited < GRACE + STOP_BOUND + SLACK, exited
        for _, code, ended in heard:
            assert code == 1012 and ended < GRACE + CLOSE_MARGIN, (code, ended, exited)
        assert not heard[2][0]  # no session, no ``closed``
        for frames, _, _ in heard[:2]:
            closed = [at for frame, at in frames if frame["type"] == "closed"]
            assert len(closed) == 1 and closed[0] < GRACE + SLACK, frames
            assert not [frame for frame, _ in frames if frame["type"] in ("ack", "error")]
        assert_no_tracebacks(server.log_records(), EXPECTED_ERRORS)
        seen = [frame["seq"] for frame, _ in heard[1][0] if frame["type"] == "event"]
        assert seen == list(range(1, ACKED + 1)), heard[1][0]  # the viewer's, every ack's
    finally:
        server.kill()
    await sent_again_once(tmp_path, store, epoch)


async def sent_again_once(tmp_path: Path, store: str, epoch: str) -> None:
    """The next start, the lock gone: the acknowledged events; the append never
    acknowledged, sent again with its key, stored once; the viewer's resume from the
    last event it got replays exactly what came after."""
    again = ServerProcess(tmp_path / "data", tmp_path / "again.log", "--store", store)
    await again.start_in_loop()
    try:
        publisher = await peer(again)
        answers = [await acked(publisher, ACKED + 1) for _ in range(2)]
        assert [answer["seq"] for answer in answers] == [ACKED + 1] * 2, answers
        await publisher.close()
        viewer, welcome = await welcomed(again, last_seq=ACKED, epoch=epoch)
        assert (welcome["resumed"], welcome["replay"]) == (True, 1), welcome
        replayed = json.loads(await asyncio.wait_for(viewer.recv(), 30))
        assert (replayed["type"], replayed["seq"]) == ("event", ACKED + 1), replayed
        await viewer.close()
        url = f"http://127.0.0.1:{again.port}/api/v1/sessions/{SESSION}/events?after_seq=0"
        found = await asyncio.to_thread(read_json, url)
        contents = [record["event"]["content"] for record in found["events"]]
        assert contents == [f"event {number}" for number in range(1, ACKED + 2)], contents
    finally:
        assert await asyncio.to_thread(again.stop, HANG_GUARD) == 0


def read_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())
