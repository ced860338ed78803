"""The exit status of ``serve --workers N``'s supervisor after a graceful stop, as a
service manager sees it (docs/operations.md, Exit statuses): 1 when a worker's stop
did not end cleanly (its store's close left at ``--store-close-timeout`` with appends
owed to a disk that hangs; before, the supervisor exited 0 all the same), 0 when every
worker stopped cleanly or was not serving (a worker whose start fails exits 3 and is
restarted: nothing of its is owed).

A real supervisor and real workers in processes of their own (tests/
supervised_jsonl_child.py: each worker on a JSONL store of its own, whose sync helper
a test stops with SIGSTOP), stopped with SIGTERM by pid. The bounds are hang guards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.server.supervisor import NOT_STARTED, STOP_UNFINISHED, status_at_stop
from tests.parent_death import ending_with_this_process
from tests.server_process import ROOT
from tests.test_jsonl_stop_stuck_disk import ACKED, HANG_GUARD, event, sync_helper_of

CHILD = Path(__file__).resolve().parent / "supervised_jsonl_child.py"
_LISTENING = re.compile(r'"event":"listening on [^"]+:(\d+)"[^\n]*?"worker":(\d+)')
SESSION = "stuck"


class Supervised:
    """tests/supervised_jsonl_child.py in a child process, its output in a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.base = tmp_path / "data"
        self.log_path = tmp_path / "serve.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), str(self.base)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
                preexec_fn=ending_with_this_process(),
            )

    def records(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def until(self, found: Any, what: str) -> Any:
        deadline = time.monotonic() + HANG_GUARD
        while not (result := found()):
            assert time.monotonic() < deadline, f"no {what}: {self.log_path.read_text()}"
            assert self.proc.poll() is None, self.log_path.read_text()
            time.sleep(0.02)
        return result

    def listening(self) -> int:
        """The port, once both workers listen."""
        found = self.until(lambda: _LISTENING.findall(self.log_path.read_text())[1:], "two")
        return int(found[0][0])

    def worker_pids(self) -> dict[int, int]:
        started = [r for r in self.records() if r.get("event") == "worker started"]
        return {int(r["worker"]): int(r["pid"]) for r in started}

    def exits(self) -> set[tuple[int, int]]:
        return {
            (r["worker"], r["status"]) for r in self.records() if r.get("event") == "worker exited"
        }

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(HANG_GUARD)

    def kill(self) -> None:
        """SIGKILL to the supervisor, and to every worker it started (by pid)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for record in self.records():
            if record.get("event") == "worker started":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(record["pid"]), signal.SIGKILL)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Supervised]:
    if sys.platform != "linux":
        pytest.skip("the JSONL sync helper is found through /proc")
    server = Supervised(tmp_path)
    try:
        yield server
    finally:
        server.kill()


async def append_held_on_some_worker(
    supervised: Supervised, port: int
) -> tuple[int, int, ClientConnection]:
    """A publisher's append waiting on a sync that does not end: the sync helper of the
    worker its connection reached stopped (SIGSTOP) first: that worker, the helper, the
    publisher."""
    ws = await connect(f"ws://127.0.0.1:{port}/api/v1/stream/{SESSION}", open_timeout=30)
    await ws.send(json.dumps({"type": "hello", "create": True}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "welcome"
    logs = {n: supervised.base / f"w{n}" / "events" / f"{SESSION}.jsonl" for n in (1, 2)}
    worker = next(n for n, log in logs.items() if log.exists())
    helper = sync_helper_of(supervised.worker_pids()[worker])
    for number in range(1, ACKED + 1):  # (as tests/test_jsonl_stop_stuck_disk.py does)
        await ws.send(event(number))
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "ack"
    os.kill(helper, signal.SIGSTOP)
    await ws.send(event(ACKED + 1))
    written = f"event {ACKED + 1}".encode()
    supervised.until(lambda: written in logs[worker].read_bytes(), "the unsynced write")
    return worker, helper, ws


async def test_a_worker_whose_stop_left_its_store_unfinished_makes_the_supervisor_exit_1(
    supervised: Supervised,
) -> None:
    port = await asyncio.to_thread(supervised.listening)
    stuck, helper, publisher = await append_held_on_some_worker(supervised, port)
    other = 3 - stuck
    try:
        assert await asyncio.to_thread(supervised.stop) == STOP_UNFINISHED
    finally:
        os.kill(helper, signal.SIGCONT)  # it syncs, sees its stream's end, and exits
        publisher.transport.abort()
    assert supervised.exits() == {(stuck, STOP_UNFINISHED), (other, 0)}
    records = supervised.records()
    owed = [r for r in records if str(r.get("event")).startswith("the store did not close")]
    assert [r["worker"] for r in owed] == [stuck]
    unclean = [r for r in records if r.get("event") == "a worker's stop did not end cleanly"]
    assert [(r["worker"], r["status"], r["level"]) for r in unclean] == [(stuck, 1, "error")]
    assert [r["status"] for r in records if r.get("event") == "workers stopped"] == [1]


def test_a_worker_that_cannot_start_exits_3_is_restarted_and_a_clean_stop_exits_0(
    tmp_path: Path,
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "w2").write_text("not a directory: worker 2's store cannot open\n")
    server = Supervised(tmp_path)
    try:
        restarts = server.until(
            lambda: [r for r in server.records() if r.get("event") == "worker died; restarting"],
            "restart of worker 2",
        )
        assert {(r["worker"], r["status"]) for r in restarts} == {(2, NOT_STARTED)}
        server.until(lambda: _LISTENING.search(server.log_path.read_text()), "worker 1")
        assert server.stop() == 0
    finally:
        server.kill()
    assert (1, 0) in server.exits()
    assert not [
        r for r in server.records() if r.get("event") == "a worker's stop did not end cleanly"
    ]


@pytest.mark.parametrize(
    ("status", "code", "forced_by", "then"),
    [
        (0, 0, 0, 0),  # a clean stop
        (0, STOP_UNFINISHED, 0, 1),  # its store's close left at its bound
        (0, NOT_STARTED, 0, 0),  # its start failed: restarted, nothing owed
        (0, -signal.SIGTERM, 0, 0),  # still starting when the stop came
        (0, 128 + signal.SIGINT, 0, 0),  # likewise, Ctrl-C (KeyboardInterrupt)
        (0, -signal.SIGSEGV, 0, 1),  # a crash in its stop
        (0, -signal.SIGKILL, 0, 1),  # killed in its stop by another (the OOM killer)
        (0, -signal.SIGKILL, signal.SIGTERM, 143),  # by the supervisor's second signal
        (1, -signal.SIGKILL, signal.SIGINT, 130),  # which cut the stop short
        (143, STOP_UNFINISHED, signal.SIGTERM, 143),
        (1, 0, 0, 1),
        (2, STOP_UNFINISHED, 0, 2),  # a worker refused its configuration
    ],
)
def test_the_supervisors_status_after_each_worker_exit(
    status: int, code: int, forced_by: int, then: int
) -> None:
    assert status_at_stop(status, code, forced_by) == then
