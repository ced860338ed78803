"""A store that stops answering (a Redis frozen with SIGSTOP, as a stalled disk or a
hung network would leave a store): page reads are abandoned after
``--store-read-timeout``, their page-read slots go back, and each requester hears it at
once: ``error`` ``internal`` for ``history`` and ``events``, 503 for the HTTP API, close
1011 for a replay, and for a ``hello`` whose session must be loaded; ``/readyz`` says
503, ``/metrics`` serves the figures it has, an in-process receiver's replay ends with
1011. Once the store answers again, so do reads: no slot and no Redis connection was
left behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.free_form import FREE_VALUE_BYTES
from bamboo_session.server import readiness, store_stats
from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.pages import (
    ABANDONED_READS_MAX,
    PageReads,
    StoreTimeout,
)
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, get, open_peer, run_server, token

DEADLINE = 1.0
# Without the deadline a read ends with redis-py's socket timeout (10 s,
# persistence/redis/client.py) at best, and never on a store without one: a bound of
# 6 s leaves 5 s to a test's process that gets a quarter of a core, and is still 4 s
# short of the store without a deadline.
WITHIN = DEADLINE + 5.0
# Requests that must not wait in turn for one another's deadlines: the first ends at one
# deadline, the second to wait in turn at two. With 3 s, a bound of 1.5 deadlines
# leaves 1.5 s on either side, where 1 s left none (the right end at 1 s under load
# and the wrong one at 2 s).
SHARED_DEADLINE = 3.0
SHARED_WITHIN = 1.5 * SHARED_DEADLINE
VIEWERS = DEFAULT_READ_SLOTS + 2  # more readers at once than there are slots


async def stubborn(answer: asyncio.Event) -> str:
    """A store call that does not end when cancelled, until the store answers: as a
    redis-py call may not, whose asyncio.wait_for (Python 3.11) swallows a cancellation
    that comes as its send completes."""
    while True:
        try:
            await answer.wait()
            return "late"
        except asyncio.CancelledError:
            continue


async def test_a_read_that_ignores_its_cancellation_is_abandoned_at_the_deadline() -> None:
    reads = PageReads(1, DEADLINE)
    answer = asyncio.Event()
    started = time.monotonic()
    with pytest.raises(StoreTimeout, match="no answer from the store within 1 s"):
        await reads.read(lambda: stubborn(answer))
    assert time.monotonic() - started < WITHIN
    assert not reads.slots.locked()  # its slot is free, though the call goes on
    assert await reads.read(lambda: asyncio.sleep(0, "next")) == "next"
    answer.set()  # the store answers the abandoned call at last: nobody is waiting
    await asyncio.sleep(0.01)


async def test_reads_of_a_store_that_answers_none_stop_piling_up() -> None:
    reads = PageReads(1, 0.01)
    answer = asyncio.Event()
    try:
        for _ in range(ABANDONED_READS_MAX):
            with pytest.raises(StoreTimeout, match="no answer from the store"):
                await reads.lookup(lambda: stubborn(answer))
        # Each abandoned call is a task the store still holds; one more would add one.
        pending = len(asyncio.all_tasks())
        with pytest.raises(StoreTimeout, match=f"has not answered {ABANDONED_READS_MAX} reads"):
            await reads.read(lambda: stubborn(answer))
        assert len(asyncio.all_tasks()) == pending and not reads.slots.locked()
    finally:
        answer.set()  # the store is back: the abandoned calls end, and reads are served
    await asyncio.sleep(0.01)
    assert reads.abandoned == 0
    assert await reads.read(lambda: asyncio.sleep(0, "back")) == "back"


@contextlib.asynccontextmanager
async def server_on_own_redis(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, deadline: float = DEADLINE
) -> AsyncIterator[tuple[BambooServer, RedisServer]]:
    """A server on a redis-server of its own (to SIGSTOP with :func:`frozen`), with
    the read deadline of these tests."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    async with run_server(store=store, store_read_timeout=deadline) as server:
        yield server, redis


@contextlib.contextmanager
def frozen(redis: RedisServer) -> Iterator[None]:
    assert redis.pid is not None
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(redis.pid, signal.SIGCONT)


async def history_reply(viewer: Peer, request_id: str) -> dict[str, Any]:
    """The reply to a ``history`` request: the page, or an ``error``."""
    await viewer.send({"type": "history", "id": request_id, "limit": 10})
    while True:
        frame = await viewer.recv(timeout=WITHIN)
        if frame.get("id") == request_id:
            return frame


async def test_reads_of_a_frozen_store_fail_within_the_deadline_and_give_back_their_slots(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    config = {
        "store": redis.url(prefix=prefix_for(tmp_path)),
        "store_read_timeout": DEADLINE,
        "ring_size": 0,  # replays read the store
    }
    async with run_server(**config) as server, contextlib.AsyncExitStack() as stack:
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            for i in range(3):
                await agent.request({"type": "event", "id": i, "event": token(f"t{i}")}, "ack")
            message = {"role": "user", "content": "hello"}
            await agent.request({"type": "message", "id": "m", "message": message}, "ack")
        viewers = [
            (await stack.enter_async_context(attach(server, session_id)))[0] for _ in range(VIEWERS)
        ]
        slots = server.services.page_reads.slots
        for _ in range(DEFAULT_READ_SLOTS):  # the resumer's first page waits for a slot
            await slots.acquire()
        resumer, resumed = await stack.enter_async_context(attach(server, session_id, last_seq=0))
        assert resumed["replay"] == 4

        with frozen(redis):
            started = time.monotonic()
            for _ in range(DEFAULT_READ_SLOTS):
                slots.release()  # the replay's read goes to the store, and hangs there
            replies = [history_reply(viewer, f"h{n}") for n, viewer in enumerate(viewers)]
            http = get(server, f"/api/v1/sessions/{session_id}/events")
            *errors, (status, body), (code, frames) = await asyncio.gather(
                *replies, http, resumer.closed(timeout=WITHIN)
            )
            elapsed = time.monotonic() - started
        assert [e["type"] for e in errors] == ["error"] * VIEWERS, errors
        assert {e["code"] for e in errors} == {"internal"}
        assert status == 503 and body["error"]["code"] == "internal", body
        assert code == 1011 and not [f for f in frames if f["type"] == "event"]
        assert elapsed < WITHIN

        # The store is back: every slot is free again, and reads succeed.
        pages = await asyncio.gather(*(history_reply(v, f"g{n}") for n, v in enumerate(viewers)))
        assert [p["type"] for p in pages] == ["history"] * VIEWERS, pages
        assert pages[0]["messages"][0]["content"] == "hello"
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events")
        assert status == 200 and [e["seq"] for e in body["events"]] == [1, 2, 3, 4]
        late, resumed = await stack.enter_async_context(attach(server, session_id, last_seq=0))
        assert [(await late.recv_type("event"))["seq"] for _ in range(4)] == [1, 2, 3, 4]


async def test_a_hello_whose_session_a_frozen_store_must_load_closes_1011(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        # Stored, and not live in this server: an attach loads it from the store.
        session = await server.manager.create_session("u1", session_id="cold")
        assert server.manager.live_actor(session.id) is None
        with loop_reports() as reports:
            with frozen(redis):
                started = time.monotonic()
                closes = []
                for hello in ({}, {"create": True}):  # a create reads the session first
                    async with open_peer(server, "cold") as peer:
                        await peer.send({"type": "hello", **hello})
                        closes.append(await peer.closed(timeout=WITHIN))
                elapsed = time.monotonic() - started
                # The load the first hello gave up on fails at its own deadline: it
                # started after the hello's, and nobody waits for it any more.
                await eventually(lambda: not spawns_under_way(), WITHIN)
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert [code for code, _frames in closes] == [1011, 1011], closes
        assert not [frames for _code, frames in closes if frames]  # no welcome, no error
        assert elapsed < WITHIN + DEADLINE  # the first alone takes 10 s without it
        async with attach(server, "cold") as (_peer, welcome):  # the store is back
            assert welcome["session"]["id"] == "cold"


async def test_a_session_the_store_loads_after_the_stop_began_is_never_started(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    async with run_server(store=store, store_read_timeout=30.0) as server:
        await server.manager.create_session("u1", session_id="cold")
        async with open_peer(server, "cold") as peer:
            with frozen(redis):
                await peer.send({"type": "hello"})
                await asyncio.sleep(0.3)  # read, and its session's load waits on the store
                stopping = asyncio.ensure_future(server.stop())
                await asyncio.sleep(0.2)  # the sessions are retired; the load is not done
            # The store answers: the load ends after the stop retired every session.
            code, frames = await peer.closed(timeout=WITHIN)
            await asyncio.wait_for(stopping, WITHIN)
        assert code == 1012 and frames == []  # no welcome from a stopped server
        assert server.manager.live_actor("cold") is None


async def test_hellos_at_once_to_a_session_a_frozen_store_must_load_all_end_at_the_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path, SHARED_DEADLINE) as (server, redis):
        await server.manager.create_session("u1", session_id="cold")

        async def hello() -> tuple[float, int]:
            async with open_peer(server, "cold") as peer:
                await peer.send({"type": "hello"})
                code, _frames = await peer.closed(timeout=4 * SHARED_WITHIN)
            return time.monotonic() - started, code

        with frozen(redis):
            started = time.monotonic()
            ends = await asyncio.gather(*(hello() for _ in range(4)))
        assert [code for _, code in ends] == [1011] * 4
        # They share the one load: none waits for the others' deadlines in turn.
        assert max(elapsed for elapsed, _ in ends) < SHARED_WITHIN, ends


async def test_hellos_to_a_live_session_on_a_frozen_store_all_close_1011_at_the_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Its actor reads the session at every attach: the hellos do not wait in turn for
    that read, each up to redis-py's own timeout, and none stays in the session."""
    async with server_on_own_redis(start_redis, tmp_path, SHARED_DEADLINE) as (server, redis):
        async with attach(server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]

            async def hello() -> tuple[float, int, list[dict[str, Any]]]:
                async with open_peer(server, session_id) as peer:
                    await peer.send({"type": "hello"})
                    code, frames = await peer.closed(timeout=4 * SHARED_WITHIN)
                return time.monotonic() - started, code, frames

            earlier = outboxes()  # kept, so that no new one can take an old one's id
            with frozen(redis):
                started = time.monotonic()
                ends = await asyncio.gather(*(hello() for _ in range(3)))
                # Their attaches wait in the stuck actor's inbox: their outboxes let
                # go of the connections, which would otherwise stay alive with them.
                known = {id(outbox) for outbox in earlier}
                waiting = [outbox for outbox in outboxes() if id(outbox) not in known]
                assert len(waiting) == 3 and not [o for o in waiting if o.sink or o.on_close]
            assert [(code, frames) for _, code, frames in ends] == [(1011, [])] * 3, ends
            assert max(elapsed for elapsed, _, _ in ends) < SHARED_WITHIN, ends

            # The store is back: the session goes on with the agent alone in it.
            await agent.request({"type": "event", "id": 1, "event": token("t")}, "ack")
            async with attach(server, session_id) as (viewer, _welcome):
                joined = await agent.recv_type("presence")
                assert (joined["role"], joined["connections"]) == ("client", 2), joined
                await agent.request({"type": "event", "id": 2, "event": token("u")}, "ack")
                assert (await viewer.recv_type("event"))["seq"] == 2


async def test_hellos_that_retry_against_a_stuck_session_queue_at_most_its_inbox_limit(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """Each retry of a hello to a session whose actor is stuck on the store used to
    leave one more attach in its inbox, for as long as it stayed stuck; they now wait
    in line for room, as a peer's frames do, and give up at the deadline."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    limit = 2
    config = {"store": store, "store_read_timeout": SHARED_DEADLINE, "inbox_limit": limit}
    async with run_server(**config) as server:
        async with attach(server, role="agent") as (_agent, welcome):
            session_id = welcome["session"]["id"]
            actor = server.manager.actors._actors[session_id]

            async def hello() -> tuple[float, int]:
                async with open_peer(server, session_id) as peer:
                    await peer.send({"type": "hello"})
                    code, _frames = await peer.closed(timeout=4 * SHARED_WITHIN)
                return time.monotonic() - started, code

            with frozen(redis):
                for _retry in range(3):
                    started = time.monotonic()
                    ends = await asyncio.gather(*(hello() for _ in range(4)))
                    assert [code for _, code in ends] == [1011] * 4
                    assert max(elapsed for elapsed, _ in ends) < SHARED_WITHIN, ends
                    assert len(actor.inbox) <= limit


def outboxes() -> list[Outbox]:
    return [thing for thing in gc.get_objects() if type(thing) is Outbox]


async def test_a_hello_that_creates_a_session_on_a_frozen_store_closes_1011(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A new session for a user: its per-user cap reads how many they keep first."""
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        with frozen(redis):
            started = time.monotonic()
            async with open_peer(server) as peer:
                await peer.send({"type": "hello", "user_id": "u1"})
                code, frames = await peer.closed(timeout=WITHIN)
            elapsed = time.monotonic() - started
        assert code == 1011 and not frames
        assert elapsed < WITHIN
        async with attach(server, user_id="u1") as (_peer, welcome):  # the store is back
            assert welcome["session"]["user_id"] == "u1"


async def test_a_readyz_that_comes_while_its_read_is_under_way_gets_its_outcome(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        assert await get(server, "/readyz") == (200, "ready\n")
        await asyncio.sleep(readiness.PROBE_EVERY)  # the next /readyz reads the store
        with frozen(redis):
            first = asyncio.create_task(get(server, "/readyz"))
            await asyncio.sleep(DEADLINE / 4)  # its read is under way, unanswered
            assert (await get(server, "/readyz"))[0] == 503  # not the last read's 200
            assert (await first)[0] == 503


async def test_readyz_is_503_while_the_store_answers_no_read(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        assert await get(server, "/readyz") == (200, "ready\n")
        await asyncio.sleep(readiness.PROBE_EVERY)  # the store's last answer is too old
        with frozen(redis):
            status, body = await get(server, "/readyz")
            assert status == 503, body
            reason = "reads from the store fail: no answer from the store within 1 s"
            assert body == f"not ready: {reason}\n"
            # The read the store did not answer is not started again: every later
            # /readyz answers at once from it, and no read piles up behind it.
            for _ in range(3):
                await asyncio.sleep(0.4)  # past the once-a-second reads, by the end
                assert (await get(server, "/readyz"))[0] == 503
            assert reads_under_way("Readiness._read_store") == 1
        await eventually(lambda: ready(server), WITHIN)


def reads_under_way(name: str) -> int:
    """Tasks of this event loop running the coroutine function ``name`` (a qualname)."""
    return sum(task.get_coro().__qualname__ == name for task in asyncio.all_tasks())


async def ready(server: BambooServer) -> bool:
    return await get(server, "/readyz") == (200, "ready\n")


async def test_metrics_serve_what_they_have_while_the_store_answers_no_read(
    start_redis: Callable[[str], RedisServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_stats, "COUNT_EVERY", 0.0)  # every scrape counts sessions
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        for _ in range(2):
            await server.manager.create_session("u1")
        assert "bamboo_sessions_stored 2.0" in (await get(server, "/metrics"))[1]
        await server.manager.create_session("u1")
        with frozen(redis):
            for _ in range(2):  # the count the store did not answer is not asked again
                status, text = await get(server, "/metrics")
                assert status == 200 and "bamboo_sessions_stored 2.0" in text, text
                assert "bamboo_connections 0.0" in text
            assert reads_under_way("StoreStats._count") == 1
        # The store is back: the count it owed arrives, and is served.
        await eventually(lambda: stored_sessions(server, 3), WITHIN)


async def stored_sessions(server: BambooServer, count: int) -> bool:
    return f"bamboo_sessions_stored {count:.1f}" in (await get(server, "/metrics"))[1]


async def test_an_in_process_replay_of_a_frozen_store_ends_its_receiver_with_1011(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis = start_redis("redis")
    storage = await open_storage(redis.url(prefix=prefix_for(tmp_path)))
    # Without a ring, replays read the store.
    config = SessionManagerConfig(ring_size=0, store_read_timeout=DEADLINE)
    async with SessionManager(config, storage) as manager:
        session = await manager.create_session("u1")
        for i in range(3):
            await manager.append_event(session.id, AgentEvent.token(f"t{i}"))
        receiver = await manager.connect_session(session.id, last_seq=0)
        with frozen(redis):
            assert await asyncio.wait_for(receiver.recv(), WITHIN) is None
        assert receiver.close_code == 1011 and receiver.close_reason == "storage unavailable"
        await manager.disconnect_session(session.id, receiver.connection_id)
        again = await manager.connect_session(session.id, last_seq=0)  # the store is back
        events = [await asyncio.wait_for(again.recv(), WITHIN) for _ in range(3)]
        assert [event.seq for event in events if event is not None] == [1, 2, 3]
    await storage.close()


async def test_requests_held_for_a_stuck_session_weigh_their_values_not_only_their_bytes(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A frame's bytes do not bound what its free-form values take decoded (an empty
    object is 2 bytes of JSON and 72 as a Python object), so the requests a session
    holds count FREE_VALUE_BYTES per value: a publisher of such frames fills its
    session's request queue by what they hold, and the server stops reading from it.
    Nothing is lost: once the store answers, every request is."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    values = 10_000
    rows = {"type": "custom", "name": "rows", "data": [{}] * (values - 1)}
    weight = values * FREE_VALUE_BYTES  # and the frame's 30 KB
    inbox_bytes = 4 * weight  # as unweighted bytes: 130 such frames
    async with run_server(store=store, inbox_bytes=inbox_bytes, store_read_timeout=30.0) as server:
        async with attach(server, role="agent") as (agent, welcome):
            inbox = server.manager.actors._actors[welcome["session"]["id"]].inbox
            with frozen(redis):
                for request_id in range(20):
                    await agent.send({"type": "event", "id": request_id, "event": rows})
                await eventually(lambda: inbox.bytes >= 3 * weight)
                await asyncio.sleep(0.3)
                assert inbox.bytes < inbox_bytes + 2 * weight  # it stopped reading
            acks = [await agent.recv(timeout=WITHIN) for _ in range(20)]
            assert [ack["type"] for ack in acks] == ["ack"] * 20
            assert [ack["seq"] for ack in acks] == list(range(1, 21))


@contextlib.contextmanager
def loop_reports() -> Iterator[list[dict[str, Any]]]:
    """What asyncio reports to the loop's exception handler meanwhile (a task whose
    exception nobody retrieved, say), collected after a full garbage collection."""
    loop = asyncio.get_running_loop()
    reports: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    try:
        yield reports
        gc.collect()
    finally:
        loop.set_exception_handler(previous)


def spawns_under_way() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "ActorRegistry._spawn"]


async def spawn_started(server: BambooServer, session_id: str, timeout: float) -> None:
    """Returns as soon as the session's spawn is registered (before its first step)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while session_id not in server.manager.actors._spawning:
        assert loop.time() < deadline, "no spawn"
        await asyncio.sleep(0)


async def hello_given_up_while_its_load_waits(
    server: BambooServer, redis: RedisServer, session_id: str
) -> None:
    """A hello whose attach gives up at its deadline (1011) while its session's load,
    which started later with a deadline of its own, still waits on the store, frozen
    on return (the caller lets it go on)."""
    assert redis.pid is not None
    async with open_peer(server, session_id) as peer:
        with frozen(redis):
            # A create reads the session first: half the hello's deadline goes there.
            await peer.send({"type": "hello", "create": True})
            await asyncio.sleep(DEADLINE / 2)
        # The read answered; the store stops again as soon as the load starts.
        try:
            await spawn_started(server, session_id, WITHIN)
        finally:
            os.kill(redis.pid, signal.SIGSTOP)
        try:
            code, frames = await peer.closed(timeout=WITHIN)
            assert (code, frames) == (1011, [])  # the hello gave up
            assert session_id in server.manager.actors._spawning  # the load did not
        except BaseException:
            os.kill(redis.pid, signal.SIGCONT)
            raise


async def test_a_load_whose_hello_gave_up_and_ends_as_the_server_stops_logs_nothing(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The server stops while a load nobody waits for any more is under way, and the
    store answers after: the load used to fail then (ServerStopping, or the store
    closed under it) with nobody to take its failure, and asyncio logged "Task
    exception was never retrieved" with its traceback. The stop now ends it."""
    async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
        await server.manager.create_session("u1", session_id="cold")
        with loop_reports() as reports:
            await hello_given_up_while_its_load_waits(server, redis, "cold")
            try:
                stopping = asyncio.ensure_future(server.stop())
                await eventually(lambda: server.manager.actors.closed, WITHIN)
            finally:
                os.kill(redis.pid or 0, signal.SIGCONT)
            await asyncio.wait_for(stopping, WITHIN)
            assert not spawns_under_way()  # none outlives the stop, nor its store
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert server.manager.live_actor("cold") is None


async def test_a_session_loaded_after_its_hello_gave_up_is_parked_then_retired(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The load goes on once its hello has given up: the session it loads is parked,
    as if its peer had left at once; the next hello takes it, and with nobody in it,
    it retires when its retention ends."""
    redis = start_redis("redis")
    store = redis.url(prefix=prefix_for(tmp_path))
    config = {"store": store, "store_read_timeout": DEADLINE, "disconnect_retention": 1.0}
    async with run_server(**config) as server:
        manager = server.manager
        await manager.create_session("u1", session_id="cold")
        with loop_reports() as reports:
            await hello_given_up_while_its_load_waits(server, redis, "cold")
            os.kill(redis.pid or 0, signal.SIGCONT)
            await eventually(lambda: manager.live_actor("cold") is not None, WITHIN)
            loaded = manager.live_actor("cold")
            assert not spawns_under_way() and manager.page_reads.abandoned == 0
            async with attach(server, "cold") as (_peer, welcome):
                assert welcome["session"]["connections"] == 1
                assert manager.live_actor("cold") is loaded  # no second load
            await eventually(lambda: manager.live_actor("cold") is None, 1.0 + WITHIN)
        assert [(r["message"], repr(r.get("exception"))) for r in reports] == []
        assert len(manager.actors) == 0 and manager.budget.used == 0


async def test_a_creation_whose_caller_gave_up_and_fails_as_the_server_stops_logs_nothing(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """A get-or-create whose caller gave up (cancelled, as a connection's task is at a
    stop) while the creation's write waits on the store: the creation fails once the
    store is closed under it, with nobody left to take its failure, which asyncio logged
    as "Task exception was never retrieved" with its traceback."""
    with loop_reports() as reports:
        async with server_on_own_redis(start_redis, tmp_path) as (server, redis):
            await creation_given_up_as_the_server_stops(server, redis)
        del server
    assert [(r["message"], repr(r.get("exception"))) for r in reports] == []


async def creation_given_up_as_the_server_stops(server: BambooServer, redis: RedisServer) -> None:
    manager, loop = server.manager, asyncio.get_running_loop()
    assert redis.pid is not None
    caller = asyncio.ensure_future(manager.ensure_session("fresh", "u1"))
    deadline = loop.time() + WITHIN
    try:
        while "fresh" not in manager.creations:  # before the creation's first step
            assert loop.time() < deadline and not caller.done(), "no creation"
            await asyncio.sleep(0)
    finally:
        os.kill(redis.pid, signal.SIGSTOP)
    try:
        caller.cancel()
        await asyncio.wait([caller])
        stopping = asyncio.ensure_future(server.stop())
        await eventually(lambda: manager.actors.closed, WITHIN)
    finally:
        os.kill(redis.pid, signal.SIGCONT)
    await asyncio.wait_for(stopping, WITHIN)
    await eventually(lambda: "fresh" not in manager.creations, WITHIN)
