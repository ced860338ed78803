"""A live session whose actor is stuck on a store that stops answering (a Redis frozen
with SIGSTOP): hellos to it close 1011 at the deadline without waiting in turn, and
leave no connection held; their retries queue at most its inbox limit; a publisher's
requests held for it are weighed by their free-form values, not only their bytes, and
the server stops reading from it. Once the store answers, the session goes on and every
held request is answered."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bamboo_session.protocol.free_form import FREE_VALUE_BYTES
from bamboo_session.server.outbox import Outbox
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.store_stalls_support import (
    SHARED_DEADLINE,
    SHARED_WITHIN,
    WITHIN,
    frozen,
    server_on_own_redis,
)
from tests.support import attach, open_peer, run_server, token


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
