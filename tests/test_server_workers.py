"""``serve --workers N`` as an operator runs it: N worker processes on one port under a
supervisor, sharing one Redis store. Connections are spread over the workers; a worker
killed with SIGKILL is restarted and its clients resume on the others; SIGTERM to the
supervisor shuts every worker down gracefully, and so does a supervisor killed with
SIGKILL (Linux); stores one process must own are refused with a one-line reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
import redis
from websockets.asyncio.client import connect

from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.client import BambooClient
from tests.parent_death import ON_LINUX, ended, ending_with_this_process
from tests.redis_server import RedisServer, free_port, prefix_for
from tests.server_process import ROOT, assert_no_tracebacks

_LISTENING = re.compile(
    r'"event":"listening on [^"]+:(\d+)"[^\n]*?"worker":(\d+)[^\n]*?"pid":(\d+)'
)
FAST = {"backoff_initial": 0.05, "backoff_max": 0.3}


class Workers:
    """``bamboo-session serve --workers N`` in a child process, its output in a file."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        argv = [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0"]
        argv += ["--log-format", "json", *args]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, cwd=ROOT, preexec_fn=ending_with_this_process()
            )
        self.pids: set[int] = set()  # workers seen listening

    def listening(self, count: int, timeout: float = 20.0) -> dict[int, int]:
        """Waits for ``count`` "listening" lines in all; worker number -> its last pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.findall(self.log_path.read_text())
            if len(found) >= count:
                self.port = int(found[0][0])
                self.pids.update(int(pid) for _, _, pid in found)
                return {int(worker): int(pid) for _, worker, pid in found}
            assert self.proc.poll() is None, self.log_path.read_text()
            time.sleep(0.05)
        raise AssertionError(f"no {count} listening lines: {self.log_path.read_text()}")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def records(self) -> list[dict[str, object]]:
        lines = self.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def kill(self) -> None:
        """SIGKILL to the supervisor and to every worker seen (by pid)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    store = redis_server.url(prefix=prefix_for(tmp_path))
    server = Workers(tmp_path / "serve.log", "--store", store, "--workers", "2")
    try:
        yield server
    finally:
        server.kill()


def test_workers_share_the_port_and_a_dead_one_is_restarted(workers: Workers) -> None:
    pids = workers.listening(2)
    assert set(pids) == {1, 2} and len(set(pids.values())) == 2

    async def scenario() -> None:
        # Enough clients that SO_REUSEPORT gives each worker some (all on one: 2**-23).
        async with asyncio.TaskGroup() as group:
            clients = [
                group.create_task(BambooClient.connect(workers.url, f"w{i}", create=True, **FAST))
                for i in range(24)
            ]
        agents = [task.result() for task in clients]
        try:
            for i, agent in enumerate(agents):
                assert await agent.publish(AgentEvent.token(str(i))) == 1
            os.kill(pids[1], signal.SIGKILL)
            # Clients of the dead worker reconnect to the other (then to both), resume,
            # and every session still takes publishes exactly once.
            for i, agent in enumerate(agents):
                seq = await asyncio.wait_for(agent.publish(AgentEvent.token(f"{i}b")), 20)
                assert seq == 2
            assert sum(agent.reconnects for agent in agents) >= 1
        finally:
            for agent in agents:
                await agent.close()

    asyncio.run(scenario())
    restarted = workers.listening(3)
    assert restarted[1] != pids[1] and restarted[2] == pids[2]
    records = workers.records()
    # Worker 1's clients reconnected (above), worker 2 served clients to their end.
    served_by = {r.get("worker") for r in records if r.get("event") == "connection closed"}
    assert 2 in served_by
    died = [r for r in records if r.get("event") == "worker died; restarting"]
    assert [(r["worker"], r["status"]) for r in died] == [(1, -signal.SIGKILL)]

    assert workers.stop() == 0  # SIGTERM: passed on, every worker exits gracefully
    records = workers.records()
    exits = {(r["worker"], r["status"]) for r in records if r.get("event") == "worker exited"}
    assert exits == {(1, 0), (2, 0)}
    assert sum(1 for r in records if r.get("event") == "stopped") == 2
    assert_no_tracebacks(records, allowed=("worker died",))


@pytest.mark.skipif(not ON_LINUX, reason="workers end with their supervisor on Linux only")
def test_workers_of_a_killed_supervisor_stop_gracefully(workers: Workers) -> None:
    """An OOM kill or ``kill -9`` of the supervisor leaves no worker serving the port
    with nobody to stop or restart it: each stops as on SIGTERM, its clients closed
    with 1012 (they resume elsewhere), and nothing listens on the port after."""
    pids = set(workers.listening(2).values())

    async def killed_while_attached() -> tuple[dict[str, object], int | None]:
        async with connect(f"{workers.url}/api/v1/stream/s1", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "create": True}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "welcome"
            workers.proc.kill()  # SIGKILL, to the supervisor alone
            closed = json.loads(await asyncio.wait_for(ws.recv(), 20))
            await asyncio.wait_for(ws.wait_closed(), 10)
            return closed, ws.close_code

    closed, code = asyncio.run(killed_while_attached())
    assert (closed, code) == ({"type": "closed", "reason": "server restarting"}, 1012)
    assert workers.proc.wait(10) == -signal.SIGKILL
    # A condition waited for, not a speed: a worker still alive fails after the wait.
    assert [pid for pid in sorted(pids) if not ended(pid, wait=20)] == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", workers.port), timeout=5).close()
    records = workers.records()
    stopped = [r.get("worker") for r in records if r.get("event") == "stopped"]
    assert sorted(stopped) == [1, 2], records  # both stopped gracefully, the idle one too
    assert_no_tracebacks(records)


@pytest.mark.parametrize("store", ["jsonl", "memory://"])
def test_stores_one_process_owns_refuse_several_workers(store: str, tmp_path: Path) -> None:
    args = ["--workers", "2"]
    if store != "jsonl":
        args += ["--store", store]
    done = subprocess.run(
        [sys.executable, "-m", "bamboo_session.server", "serve", "--port", "0", *args],
        cwd=ROOT,
        env={**os.environ, "BAMBOO_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()  # --log-format json: every line is JSON, this one too
    record = json.loads(line)
    assert record["level"] == "error", record
    assert record["event"].startswith("cannot start: --workers 2 needs a store several processes")


def restarts_due(records: list[dict[str, object]]) -> dict[object, float]:
    """The workers waiting to be started again, each with when (a wall-clock time) its
    backoff runs out: the time of its last death plus the ``restart_in`` logged then."""
    due: dict[object, float] = {}
    for record in records:
        if record.get("event") == "worker started":
            due.pop(record["worker"], None)
        elif record.get("event") == "worker died; restarting":
            died = datetime.fromisoformat(str(record["timestamp"])).timestamp()
            due[record["worker"]] = died + float(str(record["restart_in"]))
    return due


def test_workers_that_keep_dying_are_restarted_ever_more_slowly(tmp_path: Path) -> None:
    """Workers that cannot start (no Redis there) are restarted after a backoff that
    doubles, and at most RESTART_BURST times a minute over all of them."""
    from bamboo_session.server.supervisor import BACKOFF_INITIAL, RESTART_BURST

    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    server = Workers(tmp_path / "serve.log", "--store", nowhere, "--workers", "4")

    def started() -> int:
        return sum(1 for r in server.records() if r.get("event") == "worker started")

    try:
        # Waited for rather than timed: on a busy machine each start takes longer.
        deadline = time.monotonic() + 60
        while started() < 4 + RESTART_BURST and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started() == 4 + RESTART_BURST, "restarted up to the bound"
        # Without the bound, every worker would start again once its backoff ran out (up
        # to 4 s): waited for past the last of them, from the log, not a fixed 8 s.
        dues: dict[object, float] = {}
        while len(dues) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
            dues = restarts_due(server.records())
        assert len(dues) == 4, f"every worker died and waits: {dues}"
        time.sleep(max(0.0, max(dues.values()) + 1.0 - time.time()))
        assert server.stop() == 0
    finally:
        server.kill()
    records = server.records()
    died = [r for r in records if r.get("event") == "worker died; restarting"]
    first = [r["restart_in"] for r in died if r["worker"] == 1]
    assert first[:3] == [BACKOFF_INITIAL, 2 * BACKOFF_INITIAL, 4 * BACKOFF_INITIAL]
    assert started() == 4 + RESTART_BURST, "bounded, and not by the backoff alone"
    assert "cannot start: redis unavailable" in server.log_path.read_text()


def test_the_supervisor_loads_what_workers_use_once_before_forking_them(tmp_path: Path) -> None:
    """So a worker, and each restart of one, inherits its loop and its store's client
    rather than importing them again (test_workers_that_keep_dying_are_restarted_ever_
    more_slowly starts 14). The supervisor itself runs neither: their compiled modules
    (uvloop's loop, hiredis for redis-py) are mapped in it only if it imported them."""
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    server = Workers(tmp_path / "serve.log", "--store", nowhere, "--workers", "2")
    try:
        deadline = time.monotonic() + 30
        while not any(r.get("event") == "worker started" for r in server.records()):
            assert time.monotonic() < deadline and server.proc.poll() is None
            time.sleep(0.05)
        maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
        assert server.stop() == 0
    finally:
        server.kill()
    mapped = {Path(line.split()[-1]).name.split(".")[0] for line in maps.splitlines()}
    assert {"loop", "hiredis"} <= mapped, sorted(mapped)


def test_a_configuration_every_worker_refuses_stops_the_supervisor_with_status_2(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A setting only the server itself refuses (a short auth secret): each worker says
    so in one line and exits 2, and the supervisor stops instead of restarting them."""
    store = redis_server.url(prefix=prefix_for(tmp_path))
    server = Workers(
        tmp_path / "serve.log", "--store", store, "--workers", "2", "--auth-secret", "short"
    )
    try:
        assert server.proc.wait(30) == 2
    finally:
        server.kill()
    records = server.records()
    assert not [r for r in records if r.get("event") == "worker died; restarting"]
    assert any(str(r.get("event")).startswith("cannot start: auth_secret") for r in records)
    assert "Traceback" not in server.log_path.read_text()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_redis_that_may_lose_acknowledged_writes_stops_serve_with_status_2(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, workers: str
) -> None:
    """A Redis run without ``appendonly yes`` refuses every worker alike until its
    operator changes it (docs/storage-redis.md, Durability): ``serve`` exits 2 with the
    reason in one line, as for a bad configuration, and the supervisor stops instead of
    restarting workers that would be refused forever."""
    redis_server = start_redis("lossy")
    with redis.Redis(port=redis_server.port) as admin:
        admin.config_set("appendonly", "no")
    store = redis_server.url(prefix=prefix_for(tmp_path))
    server = Workers(tmp_path / "serve.log", "--store", store, "--workers", workers)
    try:
        assert server.proc.wait(30) == 2, server.log_path.read_text()
    finally:
        server.kill()
    records = server.records()
    assert not [r for r in records if r.get("event") == "worker died; restarting"]
    refusals = [r for r in records if str(r.get("event")).startswith("cannot start: Redis")]
    assert refusals and all(r["level"] == "error" for r in refusals), records
    assert "or add accept_lossy=true to the store URL" in str(refusals[0]["event"])
    assert "Traceback" not in server.log_path.read_text()


def test_a_second_signal_that_kills_the_workers_is_in_the_supervisors_status(
    workers: Workers,
) -> None:
    """Ctrl-C twice, or SIGTERM twice, on ``serve --workers``: the supervisor SIGKILLs
    workers still stopping, and exits 128 + the signal, as ``serve`` alone does
    (docs/operations.md): not 0, which told a process manager the stop was clean. The
    workers are held (SIGSTOP) so that the second signal finds them stopping."""
    pids = workers.listening(2)
    for pid in pids.values():
        os.kill(pid, signal.SIGSTOP)
    workers.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20  # (two signals at once would be taken as one)
    while not any(r.get("event") == "stopping workers" for r in workers.records()):
        assert time.monotonic() < deadline, workers.log_path.read_text()
        time.sleep(0.02)
    workers.proc.send_signal(signal.SIGTERM)
    assert workers.proc.wait(20) == 128 + signal.SIGTERM
    records = workers.records()
    exits = {(r["worker"], r["status"]) for r in records if r.get("event") == "worker exited"}
    assert exits == {(1, -signal.SIGKILL), (2, -signal.SIGKILL)}
    assert [r["status"] for r in records if r.get("event") == "workers stopped"] == [143]
