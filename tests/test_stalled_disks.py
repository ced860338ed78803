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
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets

from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from bamboo_session.server.pages import StoreTimeout
from bamboo_session.server.readiness import probe_path
from tests.instances import eventually
from tests.support import Peer, attach, get, open_peer, run_server, token

DEADLINE = 1.0
WITHIN = DEADLINE + 3.0  # bounds each wait: a reply that never comes fails the test
# A hello whose attach waits on a write another process's lock holds up ends at the
# deadline, or, without it, when SQLite's busy timeout does (10 s,
# persistence/sqlite/schema.py) or the lock goes: 4 s on either side of this bound.
ATTACH_WITHIN = DEADLINE + 5.0
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


async def http_get(server: BambooServer, path: str) -> tuple[int, Any]:
    """A GET on its own socket (not in a thread: the test counts the threads' jobs);
    the status and the JSON body (or its text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        host = f"127.0.0.1:{server.port}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), WITHIN)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    json_body = b"application/json" in head
    return int(head.split()[1]), json.loads(body) if json_body else body.decode()


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


@contextlib.contextmanager
def log_as_fifo(log: Path) -> Iterator[None]:
    """The log becomes a FIFO with no writer: whoever opens it waits. On exit the log
    is put back, then the FIFO gets a writer, which lets the waiting opens through
    (they read nothing: their callers gave up long ago)."""
    aside, fifo_aside = log.with_name(log.name + ".real"), log.with_name(log.name + ".fifo")
    log.rename(aside)
    os.mkfifo(log)
    try:
        yield
    finally:
        log.rename(fifo_aside)
        aside.rename(log)
        with contextlib.suppress(OSError):  # ENXIO: nobody is waiting on it
            os.close(os.open(fifo_aside, os.O_WRONLY | os.O_NONBLOCK))


async def test_a_jsonl_log_that_never_answers_queues_no_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}", store_read_timeout=DEADLINE) as server,
        session_with_viewers(server) as (session_id, viewers),
    ):
        with log_as_fifo(data / "events" / f"{session_id}.jsonl"):
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


def drain(fifo: Path) -> None:
    """Be the FIFO's reader until its writer is done (the probe writes a frame's worth
    of bytes, then fails to sync a FIFO). Opened without waiting for a writer: a probe
    waiting in its open counts as one already, and with none (a probe that never came
    here) the first read is the end, and the test fails rather than hangs."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(reader, True)
        while os.read(reader, 65536):
            pass
    finally:
        os.close(reader)


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
        await eventually(lambda: ready(server), WITHIN)  # the disk takes a probe again


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
            await asyncio.sleep(DEADLINE + 0.2)
            status, body = await http_get(server, "/readyz")
            assert status == 503, body
            assert body.startswith("not ready: an append has waited"), body
        ack = await asyncio.wait_for(agent.recv_type("ack"), WITHIN)
        assert ack["id"] == 1 and ack["seq"] == 1  # it waited, and was stored
        await eventually(lambda: ready(server), WITHIN)


# Holds an SQLite database's write lock until killed (BEGIN IMMEDIATE).
HOLD_WRITE_LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.asynccontextmanager
async def holding(script: str, path: Path | str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Another process runs ``script`` on ``path``: it says "held" once it holds its
    locks, and holds them until the block ends (it is killed, its locks go with it)."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        str(path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), WITHIN) == b"held\n"
        yield holder
    finally:
        holder.kill()
        await holder.wait()


@contextlib.asynccontextmanager
async def write_lock_held(path: Path) -> AsyncIterator[None]:
    """Another process holds the SQLite database's write lock until the block ends."""
    async with holding(HOLD_WRITE_LOCK, path):
        yield


async def test_a_hello_given_up_on_while_its_attach_writes_leaves_no_connection_behind(
    tmp_path: Path,
) -> None:
    """A parked session's actor marks it active when someone attaches: a write, which
    waits for the lock another process holds. The hello ends with 1011 at the read
    deadline (an in-process attach with StoreTimeout); once the write is done, the
    attach given up on is undone."""
    path = tmp_path / "bamboo.db"
    async with run_server(store=f"sqlite://{path}", store_read_timeout=DEADLINE) as server:
        async with attach(server) as (_viewer, welcome):
            session_id = welcome["session"]["id"]
        await eventually(lambda: session_is(server, session_id, "disconnected", 0), WITHIN)
        assert server.manager.live_actor(session_id) is not None  # parked, not gone
        budget_used = server.manager.budget.used
        async with write_lock_held(path):
            started = asyncio.get_running_loop().time()
            async with open_peer(server, session_id) as peer:
                await peer.send({"type": "hello"})
                code, frames = await peer.closed(timeout=ATTACH_WITHIN)
            elapsed = asyncio.get_running_loop().time() - started
            with pytest.raises(StoreTimeout):  # the in-process API's caller has no detach
                await server.manager.connect_session(session_id)
        assert (code, frames) == (1011, []) and elapsed < ATTACH_WITHIN
        # The actor attaches this one after the two it was given up on: only it is left.
        await attach_again_after_1011(server, session_id)
        await eventually(lambda: session_is(server, session_id, "disconnected", 0), WITHIN)
        # Nothing queued for them stays charged: no writer would ever send it.
        assert server.manager.budget.used == budget_used


async def attach_again_after_1011(server: BambooServer, session_id: str) -> None:
    """Attach as a client would once the lock is gone: the store first works off the
    writes that waited for it, behind SQLite's busy backoff, and a hello meanwhile may
    meet the read deadline too (1011, as in a loaded CI run); the client then tries
    again. Attached, the session is active with this one connection alone."""
    for attempt in range(3):
        try:
            async with attach(server, session_id):
                assert await session_is(server, session_id, "active", 1)
            return
        except websockets.ConnectionClosedError as exc:
            if exc.rcvd is None or exc.rcvd.code != 1011 or attempt == 2:
                raise


async def session_is(server: BambooServer, session_id: str, state: str, connections: int) -> bool:
    # A page (limit): a plain answer, where the whole history is chunked.
    status, body = await http_get(server, f"/api/v1/sessions/{session_id}?limit=1")
    assert status == 200, body
    metadata = body["metadata"]
    return (metadata["state"], metadata.get("connections")) == (state, connections)


async def test_a_jsonl_log_whose_open_hangs_holds_up_appends_not_the_server(
    tmp_path: Path,
) -> None:
    """Opening a log can block (a hung disk; here a FIFO that waits for a reader). It
    happens on the writer's thread: appends wait, and the server still answers
    ``/readyz`` (503: an append has waited) until the open goes through."""
    data = tmp_path / "data"
    async with (
        run_server(store=f"jsonl://{data}") as server,
        attach(server, role="agent") as (agent, welcome),
    ):
        session_id = welcome["session"]["id"]
        await agent.request({"type": "event", "id": 1, "event": token("t1")}, "ack")
    log = data / "events" / f"{session_id}.jsonl"
    # A new server has no descriptor of the log open: its next append opens it.
    async with (
        run_server(store=f"jsonl://{data}", store_read_timeout=DEADLINE) as server,
        attach(server, session_id, role="agent") as (agent, _welcome),
    ):
        with log_as_fifo(log):
            # Lets the open through in any case, so that a frozen loop ends the test.
            reader = threading.Timer(4 * WITHIN, drain, (log,))
            reader.start()
            try:
                started = time.monotonic()
                await agent.send({"type": "event", "id": 2, "event": token("t2")})
                await asyncio.sleep(DEADLINE + 0.2)
                status, body = await http_get(server, "/readyz")
                assert time.monotonic() - started < WITHIN  # the loop was not held up
                assert status == 503, body
                assert body.startswith("not ready: an append has waited"), body
            finally:
                reader.cancel()
                threading.Thread(target=drain, args=(log,), daemon=True).start()
            ack = await agent.recv_type("ack", timeout=WITHIN)
            assert (ack["id"], ack["seq"]) == (2, 2)


async def test_a_hello_to_a_session_whose_actor_retires_in_a_stalled_write_ends_at_the_deadline(
    tmp_path: Path,
) -> None:
    """The deadline covers the whole attach: here the wait for the session's old actor,
    evicted while its task sits in a write another process's lock holds up."""
    path = tmp_path / "bamboo.db"
    config = {"store": f"sqlite://{path}", "store_read_timeout": DEADLINE, "max_sessions": 1}
    async with run_server(**config) as server:
        manager = server.manager
        stuck, other = [(await manager.create_session("u1")).id for _ in range(2)]
        async with write_lock_held(path):
            append = asyncio.create_task(manager.append_event(stuck, token("held up")))
            await eventually(lambda: ready_to_evict(server, stuck), WITHIN)
            await manager.actors.actor(other)  # the one live slot: the parked one retires
            assert manager.live_actor(stuck) is None
            started = time.monotonic()
            async with open_peer(server, stuck) as peer:
                await peer.send({"type": "hello"})
                code, frames = await peer.closed(timeout=ATTACH_WITHIN)
            elapsed = time.monotonic() - started
        assert (code, frames) == (1011, []) and elapsed < ATTACH_WITHIN
        assert (await append).seq == 1  # stored once the lock went
        async with attach(server, stuck) as (_viewer, welcome):
            assert welcome["session"]["last_seq"] == 1


async def ready_to_evict(server: BambooServer, session_id: str) -> bool:
    """The session's actor is live, and its task in the store append."""
    actor = server.manager.live_actor(session_id)
    return actor is not None and actor.task is not None and not len(actor.inbox)


# Holds SQLite's WAL write lock (byte 120 of the -shm file) and its read marks (123 to
# 127); a line on stdin lets the read marks go, the write lock stays until killed.
HOLD_LOCKS_THEN_READS = """
import fcntl, sys
with open(sys.argv[1], "r+b") as shm:
    fcntl.lockf(shm, fcntl.LOCK_EX, 1, 120)
    fcntl.lockf(shm, fcntl.LOCK_EX, 5, 123)
    print("held", flush=True)
    sys.stdin.readline()
    fcntl.lockf(shm, fcntl.LOCK_UN, 5, 123)
    print("reads", flush=True)
    sys.stdin.read()
"""


async def test_a_hello_whose_reads_and_attach_both_stall_ends_at_one_deadline(
    tmp_path: Path,
) -> None:
    """A hello's read of its session (here the get of get-or-create) and the session
    taking it in (here the move to ``active``, a write) share one deadline from the
    hello's arrival: the read is let through at 60% of it, the write never, and the
    hello closes 1011 at the deadline, not a deadline after the read."""
    # The wrong end is a deadline after the read, let through at 0.6 of it: 1.6
    # deadlines. A bound of 1.3 leaves 0.3 of a deadline, 1.2 s, on either side.
    deadline = 4.0
    path = tmp_path / "bamboo.db"
    async with run_server(store=f"sqlite://{path}", store_read_timeout=deadline) as server:
        async with attach(server, "s", create=True):
            pass
        await eventually(lambda: session_is(server, "s", "disconnected", 0), WITHIN)
        async with holding(HOLD_LOCKS_THEN_READS, f"{path}-shm") as holder:
            assert holder.stdin is not None and holder.stdout is not None
            started = time.monotonic()
            async with open_peer(server, "s") as peer:
                await peer.send({"type": "hello", "create": True})
                await asyncio.sleep(0.6 * deadline)
                holder.stdin.write(b"go\n")
                assert await asyncio.wait_for(holder.stdout.readline(), WITHIN) == b"reads\n"
                code, frames = await peer.closed(timeout=2 * deadline + WITHIN)
            elapsed = time.monotonic() - started
        assert (code, frames) == (1011, [])
        # Before, the attach got a deadline of its own once the read was done: 1.6 times
        # the deadline at least.
        assert elapsed < 1.3 * deadline, elapsed
        async with attach(server, "s") as (_viewer, welcome):
            assert welcome["session"]["state"] == "active"


@pytest.mark.parametrize("session_id", [None, "named"])
async def test_a_hello_whose_creation_waits_past_the_read_deadline_is_still_welcomed(
    tmp_path: Path, session_id: str | None
) -> None:
    """The write that creates a hello's session is not a read, and is not cut short:
    the session taking the connection in after it has a read deadline of its own. A
    creation that waited longer than the deadline for another process's write lock
    must not end the hello with 1011 once the session exists: on ``/api/v1/stream``
    its client would never learn the id of a session left active with nobody in it."""
    path = tmp_path / "bamboo.db"
    async with run_server(store=f"sqlite://{path}", store_read_timeout=DEADLINE) as server:
        async with attach(server, "first", create=True):
            pass
        async with open_peer(server, session_id) as peer:
            async with write_lock_held(path):
                await peer.send({"type": "hello", "create": True, "user_id": "u"})
                await asyncio.sleep(1.5 * DEADLINE)  # the creation waits for the lock
            welcome = await peer.recv(timeout=WITHIN)
            assert welcome["type"] == "welcome", welcome
            created = welcome["session"]["id"]
            assert session_id is None or created == session_id
            status, listing = await get(server, "/api/v1/sessions?user_id=u")
            assert status == 200
            assert [(s["id"], s["connections"]) for s in listing["sessions"]] == [(created, 1)]
