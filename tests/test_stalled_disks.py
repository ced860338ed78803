"""A threaded store (JSONL, SQLite) whose files stop answering, for real: a JSONL log
that is a FIFO nobody writes (opening it blocks in the kernel, as a read of a hung disk
does), an SQLite file whose WAL read locks another process holds (SQLite's readers then
wait in their threads, retrying for about 10 s).

Reads are given up on at ``--store-read-timeout`` (``error`` ``internal``, HTTP 503),
and the job of each one that reached a thread stays counted until it ends there: no
thread pool of the process queues jobs, however many rounds of readers give up, and
once the disk answers again the server does too. Before the jobs were counted, every
round left as many jobs queued as it had readers.

``/readyz``'s probe of a disk (a file it writes beside the store's, here a FIFO with no
reader) is given up on the same way: 503, and never a second probe while one hangs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from bamboo_session.server.readiness import probe_path
from tests.instances import eventually
from tests.stalled_disks_support import (
    DEADLINE,
    WITHIN,
    drain,
    holding,
    http_get,
    log_as_fifo,
    not_ready,
    write_lock_held,
)
from tests.support import Peer, attach, run_server, token

VIEWERS = DEFAULT_READ_SLOTS + 2  # more readers at once than there are page slots
# Rounds enough that the reads given up on outnumber asyncio's default executor's
# threads (which the JSONL store used before it had its own).
ROUNDS = min(32, (os.cpu_count() or 1) + 4) // DEFAULT_READ_SLOTS + 2

# Holds SQLite's WAL read locks: bytes 123..127 of the -shm file (the unix VFS locks
# bytes 120..127: write, checkpoint, recover, then the five read marks).
HOLD_READ_LOCKS = """
import fcntl, sys
with open(sys.argv[1], "r+b") as shm:
    fcntl.lockf(shm, fcntl.LOCK_EX, 5, 123)
    print("held", flush=True)
    sys.stdin.read()
"""


def jobs_queued() -> int:
    """Jobs waiting in the queue of any thread pool of this process (a store's own,
    asyncio's default one): submitted, not yet taken by a thread. (A pool shut down
    keeps its stop sentinel queued.)"""
    # By type, not isinstance: that would look through weak proxies, dead ones too.
    pools = [o for o in gc.get_objects() if issubclass(type(o), ThreadPoolExecutor)]
    return sum(pool._work_queue.qsize() for pool in pools if not pool._shutdown)


async def events_reply(viewer: Peer, request_id: str) -> dict[str, Any]:
    """The reply to an ``events`` request: the page, or an ``error``."""
    await viewer.send({"type": "events", "id": request_id})
    while True:
        frame = await viewer.recv(timeout=WITHIN)
        if frame.get("id") == request_id:
            return frame


@contextlib.asynccontextmanager
async def session_with_viewers(
    server: BambooServer,
) -> AsyncIterator[tuple[str, list[Peer]]]:
    async with contextlib.AsyncExitStack() as stack:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            for i in range(3):
                await agent.request({"type": "event", "id": i, "event": token(f"t{i}")}, "ack")
        viewers = [
            (await stack.enter_async_context(attach(server, session_id)))[0] for _ in range(VIEWERS)
        ]
        yield session_id, viewers


async def reads_fail_without_queuing(
    server: BambooServer, session_id: str, viewers: list[Peer]
) -> None:
    """Rounds of reads of the stalled store: each read fails, nothing is queued, and
    the reads still running in a thread stay counted as abandoned."""
    for round_ in range(ROUNDS):
        replies = [events_reply(viewer, f"r{round_}.{n}") for n, viewer in enumerate(viewers)]
        *errors, (status, body) = await asyncio.gather(
            *replies, http_get(server, f"/api/v1/sessions/{session_id}/events")
        )
        assert [(e["type"], e["code"]) for e in errors] == [("error", "internal")] * VIEWERS
        assert status == 503 and body["error"]["code"] == "internal", body
        assert jobs_queued() == 0, f"round {round_}"
        assert server.services.page_reads.abandoned > 0  # the hung jobs, until they end


async def reads_work_again(server: BambooServer, session_id: str, viewers: list[Peer]) -> None:
    pages = await asyncio.gather(*(events_reply(v, f"ok{n}") for n, v in enumerate(viewers)))
    assert [[e["seq"] for e in page["events"]] for page in pages] == [[1, 2, 3]] * VIEWERS
    status, body = await http_get(server, f"/api/v1/sessions/{session_id}/events")
    assert status == 200 and [e["seq"] for e in body["events"]] == [1, 2, 3]
    # Each hung job ends as soon as it looks again (SQLite's retries sleep in between).
    await eventually(lambda: server.services.page_reads.abandoned == 0, WITHIN)


async def test_a_jsonl_log_that_never_answers_queues_no_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}", store_read_timeout=DEADLINE) as server,
        session_with_viewers(server) as (session_id, viewers),
    ):
        with log_as_fifo(Layout(data).log(session_id)):
            await reads_fail_without_queuing(server, session_id, viewers)
        await reads_work_again(server, session_id, viewers)


async def test_an_sqlite_file_whose_locks_another_process_holds_queues_no_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bamboo.db"
    async with (
        run_server(store=f"sqlite://{path}", store_read_timeout=DEADLINE) as server,
        session_with_viewers(server) as (session_id, viewers),
    ):
        async with holding(HOLD_READ_LOCKS, f"{path}-shm"):
            await reads_fail_without_queuing(server, session_id, viewers)
        await reads_work_again(server, session_id, viewers)


def probes_under_way() -> int:
    """Threads of this process inside a readiness probe's write (server/readiness.py)."""
    frames = sys._current_frames().values()
    return sum(any(f.name == "write_probe" for f in traceback.extract_stack(t)) for t in frames)


async def test_readyz_is_503_while_its_probe_of_a_stalled_disk_hangs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with run_server(store=f"jsonl://{data}", store_read_timeout=DEADLINE) as server:
        # As the actors report an append that failed; /readyz then probes the disk.
        server.manager.append_health.failed("s1", "storage failed: [Errno 5] Input/output error", 1)
        probe = probe_path(data / "events")
        os.mkfifo(probe)  # where the probe writes: opening it waits for a reader
        try:
            for _ in range(4):
                status, body = await http_get(server, "/readyz")
                assert status == 503 and body.startswith("not ready: appends are failing")
                await asyncio.sleep(0.4)  # past the once-a-second probes, by the end
            assert probes_under_way() == 1  # the hung one is not started again
        finally:
            await asyncio.to_thread(drain, probe)
        # The disk takes a probe again: a write and a sync, which a loaded disk can hold
        # past WITHIN (CI at load 10 with crash probes beside it): a guard, not a speed.
        await eventually(lambda: ready(server), 15.0)


async def ready(server: BambooServer) -> bool:
    return await http_get(server, "/readyz") == (200, "ready\n")


async def test_readyz_is_503_while_an_append_waits_for_a_write_lock(tmp_path: Path) -> None:
    """Reads are answered (SQLite's WAL readers do not wait for writers) while another
    process holds the write lock: the append waits in SQLite's busy handler, and
    /readyz says so once it has waited the read deadline, then recovers."""
    path = tmp_path / "bamboo.db"
    async with (
        run_server(store=f"sqlite://{path}", store_read_timeout=DEADLINE) as server,
        attach(server, role="agent") as (agent, _welcome),
    ):
        assert await ready(server)
        async with write_lock_held(path):
            await agent.send({"type": "event", "id": 1, "event": token("held up")})
            status, body = await not_ready(server)
            assert status == 503, body
            assert body.startswith("not ready: an append has waited"), body
        ack = await asyncio.wait_for(agent.recv_type("ack"), WITHIN)
        assert ack["id"] == 1 and ack["seq"] == 1  # it waited, and was stored
        await eventually(lambda: ready(server), WITHIN)
