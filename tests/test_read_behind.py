"""A session's actor behind its feed on a real server (one batch past the feed's
buffer, on every backend): the feed reads the backlog from the store at most a
megabyte at a time (what each read of the store brought is recorded), and a server
stop that comes while it is reading gives the session's viewer the whole backlog
before ``closed`` and 1012."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.persistence import Storage
from bamboo_session.persistence.feed import BUFFER_BYTES, READ_BEHIND_BYTES, FeedSubscription
from bamboo_session.protocol.models import StoredEvent
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.storage_backends import BACKENDS, Backend
from tests.support import Peer, attach, token
from tests.test_server_lifecycle import eventually

BACKLOG = 30  # events of 60 KB: 1.8 MB, past the feed's buffer (1 MiB) in one append
EVENT = "x" * 60_000
MIB = 1024 * 1024
STORES = ["memory", "jsonl", "sqlite", "redis"]


@pytest.fixture(params=[b for b in BACKENDS if b.name in STORES], ids=STORES)
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend: Backend = request.param
    store = await backend.bound(request).open(tmp_path)
    try:
        yield store
    finally:
        await store.close()


class FeedReads:
    """The reads of the store that a live subscription makes behind its buffer: what
    each brought (events, bytes); with ``hold``, each waits for it to be set first."""

    def __init__(self, subscription: FeedSubscription, hold: asyncio.Event | None = None) -> None:
        self.reads: list[tuple[int, int]] = []
        self.started = asyncio.Event()
        read: Callable[[int, int], Awaitable[list[StoredEvent]]] = subscription._read

        async def recorded(after: int, limit: int) -> list[StoredEvent]:
            self.started.set()
            if hold is not None:
                await hold.wait()
            events = await read(after, limit)
            self.reads.append((len(events), sum(event.size for event in events)))
            return events

        subscription._read = recorded


def server_on(storage: Storage, **overrides: Any) -> BambooServer:
    # Frames up to 4 MiB: the whole backlog is one batch frame, so one append.
    config = ServerConfig(host="127.0.0.1", port=0, log_format="console", rate_limit=0)
    return BambooServer(config.replace(max_frame_bytes=4 * MIB, **overrides), storage)


def feed_of(server: BambooServer, session_id: str) -> FeedSubscription:
    actor = server.manager.live_actor(session_id)
    assert actor is not None
    subscription = actor.following.subscription
    assert isinstance(subscription, FeedSubscription)
    return subscription


async def publish_backlog(agent: Peer) -> None:
    items = [{"event": token(EVENT)} for _ in range(BACKLOG)]
    acks = await agent.request({"type": "batch", "id": 1, "items": items}, "acks")
    assert acks["seqs"] == list(range(1, BACKLOG + 1)), acks


async def test_a_backlog_past_the_buffer_is_read_a_megabyte_at_a_time(storage: Storage) -> None:
    async with (
        server_on(storage) as server,
        attach(server, "s1", create=True) as (viewer, _),
        attach(server, "s1", role="agent") as (agent, _),
    ):
        feed = FeedReads(feed_of(server, "s1"))
        await publish_backlog(agent)
        seqs = [(await viewer.recv_type("event"))["seq"] for _ in range(BACKLOG)]
        assert seqs == list(range(1, BACKLOG + 1))
    assert sum(events for events, _ in feed.reads) == BACKLOG  # all of it came from reads
    assert BACKLOG * len(EVENT) > BUFFER_BYTES  # (so it was past the buffer)
    for events, size in feed.reads:
        assert events == 1 or size <= READ_BEHIND_BYTES, feed.reads


async def stop_while_the_feed_reads_the_backlog(
    storage: Storage, **options: Any
) -> tuple[int | None, list[dict[str, Any]], FeedReads]:
    """A viewer of s1 and an agent that publishes the backlog; the server's stop comes
    while the actor's feed reads it (held until the stop has retired the actor). The
    viewer's close code and frames, and the feed's reads."""
    hold = asyncio.Event()
    server = server_on(storage, shutdown_grace=60.0, close_timeout=60.0, **options)
    await server.start()
    try:
        async with attach(server, "s1", create=True) as (viewer, _):
            async with attach(server, "s1", role="agent") as (agent, _):
                actor = server.manager.live_actor("s1")
                assert actor is not None
                feed = FeedReads(feed_of(server, "s1"), hold)
                await publish_backlog(agent)
                await asyncio.wait_for(feed.started.wait(), 10)
                stopping = asyncio.ensure_future(server.stop())
                await eventually(lambda: not actor.accepting)  # the stop has retired it
                hold.set()
                code, frames = await viewer.closed(timeout=30)
                await asyncio.wait_for(stopping, 30)
    finally:
        hold.set()
        await server.stop()
    return code, frames, feed


async def test_a_stop_gives_the_viewer_the_backlog_its_feed_was_reading(storage: Storage) -> None:
    """The stop comes while the actor reads the first megabyte of the backlog, every
    event of which was acknowledged before: the viewer gets them all, then ``closed``
    and 1012 (it got that megabyte only, seqs 1 to 17 of 30, when the actor retired
    at the stop's first turn with the rest unread)."""
    code, frames, feed = await stop_while_the_feed_reads_the_backlog(storage)
    assert code == 1012 and frames[-1] == {"type": "closed", "reason": "server restarting"}
    seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
    assert seqs == list(range(1, BACKLOG + 1))
    assert len(feed.reads) > 1  # the backlog came in several reads


async def test_a_stop_past_its_grace_leaves_no_reader_of_a_stalled_store(storage: Storage) -> None:
    """The store stalls on the actor's read of the backlog, past the stop's grace: the
    actor, cancelled, closes its viewer (1012) and ends with the stop, its subscription
    with it. (It went on reading the stalled store for viewers it had closed, the stop
    over, the task alive and the subscription held for as long as the store stalled.)"""
    hold = asyncio.Event()  # never set before the stop: the store stalls
    server = server_on(storage, shutdown_grace=0.3, close_timeout=0.3)
    await server.start()
    try:
        async with attach(server, "s1", create=True) as (viewer, _):
            async with attach(server, "s1", role="agent") as (agent, _):
                actor = server.manager.live_actor("s1")
                assert actor is not None
                subscription = feed_of(server, "s1")
                feed = FeedReads(subscription, hold)
                await publish_backlog(agent)
                await asyncio.wait_for(feed.started.wait(), 10)
                await asyncio.wait_for(server.stop(), 30)
                code, _frames = await viewer.closed(timeout=10)
                assert code == 1012
                assert actor.finished and actor.task is not None and actor.task.done()
                assert subscription.ended is not None
                assert feed.reads == []  # (the store stalled throughout)
    finally:
        hold.set()
        await server.stop()


async def test_a_stop_closes_a_viewer_that_cannot_take_the_backlog_1012(storage: Storage) -> None:
    """The stop delivers the backlog its feed was reading to a viewer whose send queue
    (4 frames) cannot hold it: the viewer is closed as the stop closes the others,
    1012, not 4429 (too slow), which tells a client to back off or give up; it resumes
    from the last seq it got, after the restart, and gets every event once."""
    code, frames, _feed = await stop_while_the_feed_reads_the_backlog(storage, send_queue_frames=4)
    assert code == 1012, frames[-1:]
    seqs = [frame["seq"] for frame in frames if frame["type"] == "event"]
    assert len(seqs) < BACKLOG  # (it could not take them all)
    restarted = server_on(storage)
    async with restarted, attach(restarted, "s1", last_seq=seqs[-1] if seqs else 0) as (again, _):
        while not seqs or seqs[-1] < BACKLOG:
            seqs.append((await again.recv_type("event"))["seq"])
    assert seqs == list(range(1, BACKLOG + 1))
