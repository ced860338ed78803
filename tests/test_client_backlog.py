"""The Python client's queue of events received but not yet read is bounded in count and
in bytes (protocol/client/feed.py), and nothing is lost to the bound: a client that stops
reading stops reading its socket, is closed by the server as too slow (4429), and
resumes from the last event it queued; a request made meanwhile is still answered (the
client reads on and skips events, which a resume brings back). Real servers on
ephemeral loopback ports; every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, ConnectionLost, StoredEvent
from bamboo_session.protocol.client.feed import END, EventFeed
from bamboo_session.server.app import BambooServer
from tests.client_backlog_support import CONTENT, publish_many, read_to_the_end, take, url
from tests.server_process import ServerProcess
from tests.support import get, run_server

KIB = 1024
MIB = 1024 * KIB


@contextlib.asynccontextmanager
async def clients(server: BambooServer, **watcher: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A publisher of a new session and a watcher of it (``watcher``: its options)."""
    publisher = await BambooClient.connect(url(server), receive_events=False, role="agent")
    try:
        watching = await BambooClient.connect(url(server), publisher.session_id, **watcher)
        try:
            yield publisher, watching
        finally:
            await watching.close()
    finally:
        await publisher.close()


# The server of the memory test: no rate limits, acks after write.
FAST = ("--durability", "os", "--rate-limit", "0", "--rate-limit-bytes", "0")
PUBLISHER = """
import asyncio, sys
from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient

async def main(url, session_id, count, content):
    async with await BambooClient.connect(url, session_id, receive_events=False) as c:
        for start in range(0, count, 500):
            n = min(500, count - start)
            await asyncio.gather(*(c.publish(Token(content)) for _ in range(n)))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
"""


async def publish_elsewhere(base_url: str, session_id: str, count: int, guard: float) -> None:
    """``count`` token events published by another process, which must end within
    ``guard`` seconds (a guard against a hang, not a speed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, base_url, session_id, str(count), CONTENT
    )
    try:
        assert await asyncio.wait_for(process.wait(), guard) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# -- the feed on its own ---------------------------------------------------------------


def test_the_feed_is_full_at_either_bound_and_drained_at_half_of_both() -> None:
    feed = EventFeed(max_events=4, max_bytes=1000)
    for i in range(3):
        feed.put(i, 100)
    assert not feed.full
    feed.put(3, 100)
    assert feed.full, "4 events"
    drained: list[int] = []
    feed.on_drained = lambda: drained.append(len(feed))
    assert [feed.get_nowait(), feed.get_nowait()] == [0, 1]
    assert drained == [2], "drained at half the count, not before"
    feed.put("big", 900)
    assert feed.full and (len(feed), feed.bytes) == (3, 1100), "the bytes bound"
    feed.end()
    assert [feed.get_nowait() for _ in range(4)] == [2, 3, "big", END]
    assert feed.get_nowait() is END and feed.bytes == 0
    with pytest.raises(ValueError):
        EventFeed(max_events=0)


# -- a client that never reads ----------------------------------------------------------

# Guards against a hang, not speeds: the test checks memory and order, and its two long
# steps (50,000 events published by another process, then read) take 15 to 40 s here
# (under /tmp/burn.sh), and took over 60 s to publish at a CI's worst load.
PUBLISH_GUARD, READ_GUARD = 150, 120


@pytest.mark.timeout(PUBLISH_GUARD + READ_GUARD + 30)
async def test_a_client_that_never_reads_keeps_bounded_memory_and_loses_no_event(
    tmp_path: Path,
) -> None:
    """50,000 events pushed past a watcher that reads none: its queue stops at its
    bound (count and bytes), its memory with it (tracemalloc, in a process that holds
    the watcher alone: the server and the publisher run in processes of their own), the
    server closes it as too slow (4429) rather than buffer for it, and once it reads it
    gets every event, in order, once."""
    total, max_events, max_bytes = 50_000, 2_000, 256 * KIB
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", *FAST) as server:
        base_url = f"ws://127.0.0.1:{server.port}"
        publisher = await BambooClient.connect(base_url, create=True, receive_events=False)
        session_id = publisher.session_id
        await publisher.close()
        w = await BambooClient.connect(
            base_url, session_id, max_queued_events=max_events, max_queued_bytes=max_bytes
        )
        async with w:
            # Traced only while it does not read: tracing the 50,000 reads after it
            # (their decoding) measured nothing and was most of this test's CPU.
            tracemalloc.start()
            try:
                held_before = tracemalloc.get_traced_memory()[0]
                await publish_elsewhere(base_url, session_id, total, PUBLISH_GUARD)
                await asyncio.sleep(1.0)  # what is still on its way to the watcher
                held, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            queued, queued_bytes = w.queued_events, w.queued_bytes
            got = await take(w, total, timeout=READ_GUARD)
            reconnects = w.reconnects
    print(f"watcher: peak {peak - held_before} B, held {held - held_before} B, {queued} queued")
    assert queued <= max_events
    assert queued_bytes <= max_bytes + 1 * KIB, "its last event may pass the bound"
    # Unbounded (before the bound), it held 17 MiB a second after the publisher ended,
    # 35,000 events in, and growing.
    assert peak - held_before < 6 * MIB, f"peak {peak - held_before}, held {held - held_before}"
    assert [e.seq for e in got] == list(range(1, total + 1))
    assert all(e.event == Token(CONTENT) for e in got)
    assert reconnects >= 1, "the server closed it as too slow to read, and it resumed"


async def test_requests_are_answered_while_the_queue_is_full() -> None:
    """A watcher whose queue is full and who reads none of it still gets the replies to
    its requests (a publish, a ping, a history page): it reads on, skipping events, and
    when it reads again it gets every event, the skipped ones included, once."""
    total = 600
    async with (
        run_server(durability="os") as server,
        clients(server, max_queued_events=50) as (pub, w),
    ):
        await publish_many(pub, total)
        for _ in range(50):  # the watcher's queue fills, and it stops reading
            if w.queued_events >= 50:
                break
            await asyncio.sleep(0.1)
        assert w.queued_events == 50
        own = await asyncio.wait_for(w.publish(Token("mine")), 10)
        assert own == total + 1
        await asyncio.wait_for(w.ping(), 10)
        page = await asyncio.wait_for(w.history(), 10)
        assert page.messages == []
        assert w.skipped_events > 0, "it read past the full queue to reach the replies"
        assert w.queued_events == 50, "and queued nothing more"
        await publish_many(pub, 100)
        got = await take(w, total + 100, timeout=30)
        expected = [s for s in range(1, total + 102) if s != own]
        assert [e.seq for e in got] == expected, "every other seq, in order, once"
        assert w.reconnects >= 1


async def skipping_past_a_full_queue(pub: BambooClient, watcher: BambooClient) -> None:
    """200 events published, the watcher's queue (20 events) full, and a request that
    makes it read on past it, skipping events."""
    await publish_many(pub, 200)
    for _ in range(50):
        if watcher.queued_events >= 20:
            break
        await asyncio.sleep(0.1)
    await asyncio.wait_for(watcher.ping(), 10)  # reads on past the full queue: skips
    assert watcher.skipped_events > 0


async def test_without_reconnect_a_skipped_event_ends_the_client_after_the_queue() -> None:
    """``reconnect=False`` forbids the resume that would bring skipped events back: the
    client hands over what it queued, then ends with ConnectionLost, not a silent gap."""
    async with (
        run_server(durability="os") as server,
        clients(server, max_queued_events=20, reconnect=False) as (pub, w),
    ):
        await skipping_past_a_full_queue(pub, w)
        seqs: list[int] = []
        with pytest.raises(ConnectionLost, match="resume"):
            async with asyncio.timeout(10):
                async for item in w.events():
                    assert isinstance(item, StoredEvent)
                    seqs.append(item.seq)
        assert seqs == list(range(1, 21)), "what it queued, no gap, then the error"


async def test_a_resync_waits_for_the_replies_of_requests_sent_on_its_connection() -> None:
    """A publish made just as the application reads the overflowed queue down: the
    connection being replaced must not close with it unanswered (the server drops the
    replies still on their way when the client closes, and the lost ack brought our
    own publish back as someone else's event, its resend answered as a duplicate). So
    the watcher gets exactly the log's events but its own, in order, once."""
    async with (
        run_server(durability="os") as server,
        clients(server, max_queued_events=20, backoff_initial=0.05) as (pub, w),
    ):
        await skipping_past_a_full_queue(pub, w)
        events = w.events().__aiter__()
        got = [await asyncio.wait_for(anext(events), 5) for _ in range(9)]
        # The publish goes out in the same turn as the read that drains the queue.
        publishing = asyncio.create_task(w.publish(Token("mine")))
        got.append(await asyncio.wait_for(anext(events), 5))
        own = await asyncio.wait_for(publishing, 10)
        await publish_many(pub, 10)
        while len(got) < 210:
            got.append(await asyncio.wait_for(anext(events), 10))
        assert own == 201
        assert [e.seq for e in got] == [s for s in range(1, 212) if s != own]


async def test_a_session_closed_while_events_were_skipped_does_not_end_events_silently() -> None:
    """The session is closed while the watcher, reading past its full queue to reach a
    reply, has skipped events: no resume can bring them now (4409), so events() must
    not end as if it had them all. It hands over what it queued, then ConnectionLost
    says after which seq the rest is (readable over HTTP)."""
    async with (
        run_server(durability="os") as server,
        clients(server, max_queued_events=20, backoff_initial=0.05) as (pub, w),
    ):
        await skipping_past_a_full_queue(pub, w)
        await pub.set_state("closed")
        seqs, error = await read_to_the_end(w, 10)
        assert seqs == list(range(1, 21))
        assert isinstance(error, ConnectionLost), "200 events published, 20 delivered"
        assert "after seq 20 not delivered" in str(error) and error.after_seq == 20
        status, page = await get(server, f"/api/v1/sessions/{w.session_id}/events?after_seq=20")
        assert status == 200 and [e["seq"] for e in page["events"]] == list(range(21, 201))
