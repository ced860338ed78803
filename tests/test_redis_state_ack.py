"""A ``state`` request's ``ack`` on a Redis store shared by two instances, where the
requester's instance (A) learns of the other's (B) appends a moment after Redis holds
them: its ``seq`` is the session's last seq at the change, whatever is appended after
it (the ack does not wait for those) and whatever A has delivered so far (never
below: not when the store fails to give A the events in between either, nor when it
holds none of those it said it had).

A real redis-server; two in-process servers on it, A's through a TCP proxy
(tests/proxies.py) that holds the reply to A's state write, or to its touch just
before it: the actor waits for the store there, as under a slow Redis, while B's
writer appends; raw WebSocket peers on both."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio

from bamboo_session.persistence.redis.layout import Layout
from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for
from tests.support import Peer, attach, run_server, token

STATE_WRITE = SCRIPTS["state"].sha.encode()
TOUCH = SCRIPTS["touch"].sha.encode()
# Past the 1 MiB a subscription buffers: A reads them from the store, not its buffer.
BIG_EVENTS = 20
BIG = "x" * 64 * 1024


@contextlib.asynccontextmanager
async def two_instances(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[RedisProxy, BambooServer, BambooServer]]:
    """A (through the proxy) and B, on one store."""
    raw = redis.asyncio.Redis(port=redis_server.port)
    for name in ("state", "touch"):  # else the held reply is NOSCRIPT's, run again later
        assert await raw.script_load(SCRIPTS[name].source) == SCRIPTS[name].sha
    await raw.aclose()
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    prefix = prefix_for(tmp_path)
    try:
        async with (
            run_server(store=f"redis://127.0.0.1:{port}/0?prefix={prefix}") as a,
            run_server(store=redis_server.url(prefix=prefix)) as b,
        ):
            try:
                yield proxy, a, b
            finally:
                proxy.release_replies()
    finally:
        await proxy.close()


async def publish(writer: Peer, first: int, count: int, content: str = "e") -> None:
    """``count`` events, acked with seqs ``first`` on."""
    for seq in range(first, first + count):
        await writer.send({"type": "event", "id": seq, "event": token(content)})
        ack = await writer.recv_type("ack")
        assert (ack["id"], ack["seq"]) == (seq, seq), ack


async def until_ack(peer: Peer) -> tuple[dict[str, Any], list[int]]:
    """The next ``ack``, and the seqs of the events that came before it."""
    seqs = []
    while True:
        frame = await peer.recv()
        if frame["type"] == "ack":
            return frame, seqs
        if frame["type"] == "event":
            seqs.append(frame["seq"])


def feed_ready(server: BambooServer, session_id: str) -> bool:
    """Whether the session's events wait in A's feed (pub/sub brought them), untaken."""
    actor = server.manager.live_actor(session_id)
    return actor is not None and actor.following.ready()


async def test_the_ack_does_not_wait_for_events_stored_after_the_change(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Redis has stored the change when B's writer appends seq 3: the ack says 2, and
    comes before event 3. It waited for every event A's feed had ready, stored after
    the change included (3 here), for as long as B kept appending faster than A read."""
    async with (
        two_instances(redis_server, tmp_path) as (proxy, a, b),
        attach(b, "s", create=True) as (writer, _),
        attach(a, "s") as (requester, _),
    ):
        await publish(writer, 1, 2)
        assert [(await requester.recv_type("event"))["seq"] for _ in range(2)] == [1, 2]
        proxy.hold_reply_to(STATE_WRITE)
        await requester.send({"type": "state", "id": "idle", "state": "idle"})
        await eventually(lambda: proxy.replies_held == 1)  # stored: its reply held
        await publish(writer, 3, 1)
        await eventually(lambda: feed_ready(a, "s"))
        proxy.release_replies()
        ack, before = await until_ack(requester)
        assert (ack["id"], ack["seq"], before) == ("idle", 2, [])
        assert (await requester.recv_type("event"))["seq"] == 3  # then, as ever


async def test_the_ack_is_not_below_the_change_when_the_feed_fails_to_read(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """B's writer appends seqs 3-22 (1.25 MiB) while A's touch waits, so the change is
    stored after 22; A's read of them fails (the log key made unreadable): the ack
    still says 22, the seq the change was stored after (it said what A had delivered,
    2, below the acks B's writer had before the request was even sent), and the
    requester is then closed 1011, to resume."""
    async with (
        two_instances(redis_server, tmp_path) as (proxy, a, b),
        attach(b, "s", create=True) as (writer, _),
        attach(a, "s") as (requester, _),
    ):
        await publish(writer, 1, 2)
        assert [(await requester.recv_type("event"))["seq"] for _ in range(2)] == [1, 2]
        proxy.hold_reply_to(TOUCH)
        await requester.send({"type": "state", "id": "idle", "state": "idle"})
        await eventually(lambda: proxy.replies_held == 1)
        await publish(writer, 3, BIG_EVENTS, BIG)
        log = Layout(prefix_for(tmp_path)).log("s")
        raw = redis.asyncio.Redis(port=redis_server.port)
        try:
            await raw.rename(log, log + "-aside")
            await raw.set(log, "not a stream")  # every read of it fails: WRONGTYPE
            proxy.release_replies()
            ack, _ = await until_ack(requester)
            assert (ack["id"], ack["seq"]) == ("idle", 2 + BIG_EVENTS)
            code, _ = await requester.closed()
            assert (code, requester.ws.close_reason) == (1011, "storage unavailable")
        finally:
            await raw.rename(log + "-aside", log)
            await raw.aclose()


async def test_events_the_store_no_longer_holds_end_the_room_rather_than_hang_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """As above, but the session's log is gone (deleted, as an ``allkeys-*`` eviction
    drops it; its metadata stays, seq 22): A's read of 3-22 finds nothing. The ack says
    22, the connections are closed 1011 (events missing: resume), and the session goes
    on there. The actor waited in its feed for an offer, as long as nobody appended: no
    ack, no answer to any request of A's peers."""
    async with (
        two_instances(redis_server, tmp_path) as (proxy, a, b),
        attach(b, "s", create=True) as (writer, _),
        attach(a, "s") as (requester, _),
    ):
        await publish(writer, 1, 2)
        assert [(await requester.recv_type("event"))["seq"] for _ in range(2)] == [1, 2]
        proxy.hold_reply_to(TOUCH)
        await requester.send({"type": "state", "id": "idle", "state": "idle"})
        await eventually(lambda: proxy.replies_held == 1)
        await publish(writer, 3, BIG_EVENTS, BIG)
        raw = redis.asyncio.Redis(port=redis_server.port)
        try:
            assert await raw.delete(Layout(prefix_for(tmp_path)).log("s")) == 1
        finally:
            await raw.aclose()
        proxy.release_replies()
        ack, _ = await until_ack(requester)
        assert (ack["id"], ack["seq"]) == ("idle", 2 + BIG_EVENTS)
        code, _ = await requester.closed()
        reason = "events missing from this stream; resume"
        assert (code, requester.ws.close_reason) == (1011, reason)
        async with attach(a, "s") as (again, welcome):
            assert welcome["last_seq"] == 2 + BIG_EVENTS
            await again.send({"type": "event", "id": "after", "event": token("on")})
            ack = await again.recv_type("ack")
            assert (ack["id"], ack["seq"]) == ("after", 3 + BIG_EVENTS)
