"""A threaded store (JSONL, SQLite) whose writes stall, for real: an SQLite database
whose write lock another process holds (SQLite's writer then waits in its thread, in
its busy handler), a JSONL log that is a FIFO nobody writes (opening it blocks in the
kernel, as on a hung disk).

A hello given up on while its attach writes ends 1011 at ``--store-read-timeout`` and
leaves no connection behind, nor a ``presence`` its session's viewer sees; a hello to
a session whose old actor retires in a stalled write, or whose read and attach both
stall, ends at one deadline; a hello whose creation waits past the deadline is still
welcomed. A log whose open hangs holds up appends, not the server."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import websockets

from bamboo_session.persistence.jsonl.layout import Layout
from bamboo_session.server.app import BambooServer
from bamboo_session.server.pages import StoreTimeout
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
from tests.support import attach, get, open_peer, run_server, token

# A hello whose attach waits on a write another process's lock holds up ends at the
# deadline, or, without it, when the writer's wait for the lock does (10 s,
# persistence/sqlite/lock_wait.py) or the lock goes: 4 s on either side of this bound.
ATTACH_WITHIN = DEADLINE + 5.0


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


async def test_a_hello_given_up_on_while_it_writes_an_idle_sessions_activity_is_never_seen(
    tmp_path: Path,
) -> None:
    """An idle session (its viewer asked so) becomes active when someone attaches: its
    activity first, a write that waits for the lock another process holds. The hello
    ends with 1011 at the read deadline; once the lock goes, the attach stops after
    that write, and the viewer sees nothing of it: the next hello is the first join it
    sees. Before, the attach went on into the room, and the viewer saw the closed
    connection join and leave."""
    path = tmp_path / "bamboo.db"
    async with run_server(store=f"sqlite://{path}", store_read_timeout=DEADLINE) as server:
        async with attach(server, "s", create=True) as (viewer, _):
            await viewer.request({"type": "state", "id": 1, "state": "idle"}, "ack")
            async with write_lock_held(path):
                async with open_peer(server, "s") as peer:
                    await peer.send({"type": "hello"})
                    assert await peer.closed(timeout=ATTACH_WITHIN) == (1011, [])
            for attempt in range(3):  # as in attach_again_after_1011
                try:
                    async with attach(server, "s") as (_peer, welcome):
                        presence = await viewer.recv_type("presence", WITHIN)
                    break
                except websockets.ConnectionClosedError as exc:
                    if exc.rcvd is None or exc.rcvd.code != 1011 or attempt == 2:
                        raise
    assert presence["joined"] == welcome["connection_id"], presence


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
    log = Layout(data).log(session_id)
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
                status, body = await not_ready(server)
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
