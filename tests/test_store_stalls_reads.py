"""A store that stops answering (a Redis frozen with SIGSTOP, as a stalled disk or a
hung network would leave a store): page reads are abandoned after
``--store-read-timeout``, their page-read slots go back, and each requester hears it at
once: ``error`` ``internal`` for ``history`` and ``events``, 503 for the HTTP API, close
1011 for a replay; ``/readyz`` says 503, ``/metrics`` serves the figures it has, an
in-process receiver's replay ends with 1011. Once the store answers again, so do reads:
no slot and no Redis connection was left behind."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import open_storage
from bamboo_session.protocol import AgentEvent
from bamboo_session.server import readiness, store_stats
from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from bamboo_session.server.pages import ABANDONED_READS_MAX, PageReads, StoreTimeout
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.store_stalls_support import DEADLINE, WITHIN, frozen, server_on_own_redis
from tests.support import Peer, attach, get, run_server, token

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
