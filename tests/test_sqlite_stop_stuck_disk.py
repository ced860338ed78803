"""A graceful stop of a real ``serve`` on a SQLite store whose syncs hang: strace holds
every ``fsync``/``fdatasync`` of the server's threads at its entry (``inject=…:
delay_enter``, for longer than the test's hang guard), as a disk whose sync never
returns would, while a publisher's append waits on the writer's COMMIT. The park at the
stop (its writes wait on that writer) is given up at its bound and said so, and the
stop ends, its log's last line ``stopped``, within its bounds (server/stop_bounds.py).
Before, the park waited for ever.

The held threads hold the process's exit too (as a thread in uninterruptible sleep
would), so the exit status is not read here: tests/test_jsonl_stop_stuck_disk.py
reads it, with the JSONL sync helper held by SIGSTOP. Skipped without strace, or where
ptrace is not allowed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server_process import ServerProcess
from tests.test_jsonl_stop_stuck_disk import HANG_GUARD, event, until

pytestmark = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace is not installed: apt-get install strace"
)

HELD = HANG_GUARD * 2  # seconds each sync is held: past the guard, so only the fix ends it


async def test_a_stop_on_a_sqlite_store_whose_syncs_hang_ends(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/sessions.db"
    server = ServerProcess(
        tmp_path / "data", tmp_path / "server.log", "--store", store, "--shutdown-grace", "1"
    )
    server.env = {**os.environ, "BAMBOO_STORE_CLOSE_TIMEOUT": "2"}
    await server.start_in_loop()
    assert server.proc is not None
    traced = tmp_path / "strace.txt"
    tracer: subprocess.Popen[bytes] | None = None
    try:
        ws = await connect(server.url("stuck"), open_timeout=30)
        await ws.send(json.dumps({"type": "hello", "create": True}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
        # One event acknowledged before strace attaches: when the very next append's
        # sync is the one held, there is still an acknowledged event to find stored.
        await ws.send(event(1))
        first_ack = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert first_ack == {"type": "ack", "seq": 1, "id": 1}
        tracer = hold_syncs(server.proc.pid, traced)
        acked: set[int] = {1}
        reading = asyncio.ensure_future(acks(ws, acked))

        def held() -> bool:
            """A sync of the server's held (strace writes the call's start at once)."""
            if tracer is not None and tracer.poll() is not None:
                pytest.skip("strace could not attach (ptrace not allowed here)")
            return traced.exists() and "sync(" in traced.read_text()

        # Appends, each acknowledged, until one's COMMIT is held: the writer's first
        # sync once strace is attached.
        number = 1
        while not held():
            assert number < 100, "no sync held"
            number += 1
            await ws.send(event(number))
            await until(functools.partial(held_or_acked, held, acked, number), "an ack")
        server.proc.send_signal(signal.SIGTERM)
        await until(lambda: b'"event":"stopped"' in server.log_path.read_bytes(), "the stop")
        records = server.log_records()
        events = [str(record["event"]) for record in records]
        assert "parking the sessions left attached at the stop did not end in time" in events
        ws.transport.abort()
        reading.cancel()
        # The disk comes back (strace gone): the held threads go on, the process exits
        # with the status of a store close not finished, and the next start has every
        # acknowledged event.
        tracer.kill()
        tracer.wait(10)
        assert await asyncio.to_thread(server.proc.wait, HANG_GUARD) == 1
        assert acked and acked <= stored_ids(store, tmp_path)
    finally:
        if tracer is not None:
            tracer.kill()  # the held threads go on, and the process ends
            tracer.wait(10)
        server.kill()


def stored_ids(store: str, tmp_path: Path) -> set[int]:
    """The ids of the events the next start of the store finds stored."""
    again = ServerProcess(tmp_path / "data", tmp_path / "again.log", "--store", store)
    again.start()
    try:
        url = f"http://127.0.0.1:{again.port}/api/v1/sessions/stuck/events?after_seq=0"
        with urllib.request.urlopen(url, timeout=30) as answer:
            found = json.loads(answer.read())
    finally:
        assert again.stop(HANG_GUARD) == 0
    return {int(record["event"]["content"].split()[-1]) for record in found["events"]}


def held_or_acked(held: Callable[[], bool], acked: set[int], number: int) -> bool:
    return held() or number in acked


async def acks(ws: ClientConnection, acked: set[int]) -> None:
    """The ids of the publisher's events the server acknowledged, as they come."""
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            answer = json.loads(message)
            if answer["type"] == "ack":
                acked.add(answer["id"])


def hold_syncs(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """strace on every thread of ``pid``: each ``fsync`` or ``fdatasync`` from now on
    held at its entry for ``HELD`` seconds; each call's start written to ``output``."""
    return subprocess.Popen(
        [
            *("strace", "-f", "-qq", "-o", str(output), "-p", str(pid)),
            *("-e", "trace=fsync,fdatasync"),
            *("-e", f"inject=fsync,fdatasync:delay_enter={int(HELD)}s"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
