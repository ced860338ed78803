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
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import (
    BambooClient,
    ClientError,
    ConnectionLost,
    SessionEnded,
    StoredEvent,
)
from bamboo_session.protocol.client.feed import END, EventFeed
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.instances import eventually
from tests.proxies import HttpProxy
from tests.server_process import ServerProcess
from tests.support import get, run_server

KIB = 1024
MIB = 1024 * KIB
CONTENT = "t" * 160  # a token of a streaming model, give or take


def url(server: BambooServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


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


async def publish_many(
    publisher: BambooClient, count: int, in_flight: int = 500, content: str = CONTENT
) -> None:
    """``count`` token events, ``in_flight`` at a time (they go as batch frames)."""
    for start in range(0, count, in_flight):
        batch = range(start, min(count, start + in_flight))
        await asyncio.gather(*(publisher.publish(Token(content)) for _ in batch))


async def take(client: BambooClient, count: int, timeout: float) -> list[StoredEvent]:
    """The next ``count`` events of ``client``, within ``timeout`` seconds."""
    got: list[StoredEvent] = []

    async def reading() -> None:
        async for item in client.events():
            assert isinstance(item, StoredEvent), item  # a Reset would be a lost resume
            got.append(item)
            if len(got) == count:
                return

    await asyncio.wait_for(reading(), timeout)
    return got


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


async def read_to_the_end(
    client: BambooClient, timeout: float
) -> tuple[list[int], Exception | None]:
    """The seqs ``events()`` yields until it ends, and what it raised, if anything."""
    seqs: list[int] = []
    try:
        async with asyncio.timeout(timeout):
            async for item in client.events():
                assert isinstance(item, StoredEvent), item
                seqs.append(item.seq)
    except ConnectionLost as exc:
        return seqs, exc
    return seqs, None


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


async def stored_seqs(
    server: BambooServer, session_id: str, after_seq: int, headers: dict[str, str] | None = None
) -> list[int]:
    """The seqs of the session's stored events after ``after_seq``, page after page, over
    HTTP (with ``headers``)."""
    seqs: list[int] = []
    while True:
        path = f"/api/v1/sessions/{session_id}/events?after_seq={after_seq}"
        status, page = await get(server, path, headers)
        assert status == 200, page
        if not page["events"]:
            return seqs
        seqs += [event["seq"] for event in page["events"]]
        after_seq = seqs[-1]


# A replay of 3,000 events of 4 KB: some 50 pages (512 events or 256 KiB each), and far
# more than the sockets' buffers hold, so one that is not read stops mid-way.
REPLAYED = 3000
BIG = "r" * 4000


CLOSE_TIMEOUT = 2.0  # the server's --close-timeout: how long a replay may go on after a close
# The bound for a viewer that reads in time: one no read of the 12 MB comes near, so that
# the replay is read whole whatever the machine's pace (at 2 s, four test processes on
# two cores with CPU stolen could read past it).
IN_TIME_BOUND = 60.0


async def append_in_process(
    server: BambooServer, session_id: str, count: int, content: str
) -> None:
    """``count`` token events appended in-process, 500 (2 MB) at a time: what the replay
    reads. Published over the wire, the agent's 12 MB waited some 4 s on the byte rate."""
    for start in range(0, count, 500):
        batch = [(Token(content), None)] * min(500, count - start)
        await server.manager.append_events(session_id, batch)


@pytest.mark.parametrize("waits", [False, True], ids=["reads-in-time", "reads-past-the-bound"])
async def test_a_session_closed_during_a_resumes_replay_does_not_end_events_silently(
    waits: bool,
) -> None:
    """A viewer resumes from seq 0 and reads slowly (its queue of 20 full, it stops
    reading its socket), so the server's replay waits for room, mid-way; another peer
    closes the session right after the welcome. Read within the close's bound
    (``--close-timeout``), the replay comes whole, then `closed`: events() just ends.
    Read only past it (``waits``), the replay stops where the bound found it and
    `closed` follows: the events after it up to `welcome.last_seq` never come.
    events() hands over what came, then ConnectionLost names the seq after which the
    HTTP endpoint has the rest."""
    close_timeout = CLOSE_TIMEOUT if waits else IN_TIME_BOUND
    async with run_server(durability="os", close_timeout=close_timeout) as server:
        async with await BambooClient.connect(
            url(server), receive_events=False, role="agent"
        ) as pub:
            await append_in_process(server, pub.session_id, REPLAYED, BIG)
            viewer = await BambooClient.connect(
                url(server), pub.session_id, last_seq=0, max_queued_events=20
            )
            try:
                await pub.set_state("closed")
                if waits:
                    await asyncio.sleep(CLOSE_TIMEOUT + 0.3)
                seqs, error = await read_to_the_end(viewer, 30)
            finally:
                await viewer.close()
        got = len(seqs)
        assert seqs == list(range(1, got + 1)), "what came, in order, no gap"
        assert viewer.skipped_events == 0, "nothing skipped"
        if not waits:
            assert got == REPLAYED and error is None, (got, error)
            return
        assert got < REPLAYED, f"the bound cut the replay: {got} of {REPLAYED} came"
        assert isinstance(error, ConnectionLost), f"{got} of {REPLAYED} events delivered"
        assert f"after seq {got} not delivered" in str(error)
        assert f"events?after_seq={got})" in str(error)
        rest = await stored_seqs(server, pub.session_id, got)
        assert rest == list(range(got + 1, REPLAYED + 1))


async def test_a_session_closed_after_a_resumes_replay_ends_events_normally() -> None:
    """The same resume, read to its end (its last seq being the viewer's own publish,
    known from its ack only), then the close: nothing is missing, events() just ends."""
    async with run_server(durability="os") as server:
        async with await BambooClient.connect(
            url(server), receive_events=False, role="agent"
        ) as pub:
            await publish_many(pub, 300, content=BIG)
            viewer = await BambooClient.connect(
                url(server), pub.session_id, last_seq=0, max_queued_events=20
            )
            try:
                assert [e.seq for e in await take(viewer, 300, timeout=10)] == list(range(1, 301))
                assert await viewer.publish(Token("mine")) == 301
                await pub.set_state("closed")
                seqs, error = await read_to_the_end(viewer, 10)
            finally:
                await viewer.close()
        assert seqs == [] and error is None, (seqs, error)


async def test_a_publish_only_client_owes_nothing_when_its_resume_meets_a_close() -> None:
    """A publish-only client (receive_events off) over the frame rate is closed with
    4429 ("rate limited"); the session is closed before it resumes (4409). It receives
    no events, so none can be missing: it ends with SessionEnded, not ConnectionLost."""
    async with run_server(
        durability="os",
        rate_limit=20,
        rate_limit_burst=20,
        rate_limit_refusals=5,
        batch_frames=False,
    ) as server:
        pub = await BambooClient.connect(
            url(server), receive_events=False, role="agent", backoff_initial=2.0
        )
        closer = await BambooClient.connect(url(server), pub.session_id, receive_events=False)
        try:
            # Pings over the rate until the server closes it as rate limited: as many as
            # that takes, not a set number (a loaded server reads them more slowly, while
            # the allowance refills). It then waits (1 to 2 s) to resume.
            pings: list[asyncio.Future[Any]] = []
            while pub.connected:
                assert len(pings) < 5000, "not closed as rate limited"
                pings.append(asyncio.ensure_future(pub.ping()))
                await asyncio.sleep(0)
            await closer.set_state("closed")
            seqs, error = await read_to_the_end(pub, 10)
            outcomes = await asyncio.gather(*pings, return_exceptions=True)
        finally:
            await pub.close()
            await closer.close()
        assert seqs == [] and error is None, (seqs, error)
        assert not any(isinstance(o, ConnectionLost) for o in outcomes), outcomes


AUTH_SECRET = "backlog-test-secret-" + "s" * 32


def make_token(secret: str = AUTH_SECRET, **claims: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time() + 300), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


async def closed_while_away(
    added: int, refuse_http: bool = False, auth: bool = False, bad_http_token: bool = False
) -> tuple[list[int], Exception | None, list[int], Exception | None]:
    """A viewer gets events 1..5; the server restarts (1012) on the same store and port;
    the publisher resumes first, publishes ``added`` more events and closes the session;
    the viewer's resume is refused with 4409. What its events() yields after 1..5, what
    ended it, the seqs stored after 5, and what a request then raises (the end of the
    client, SessionEnded or ConnectionLost). ``refuse_http``: the viewer reaches the
    server through a proxy that then answers its HTTP request with 503. ``auth``: the
    server checks tokens, and both clients have one of their own (the viewer's from a
    function, asked before each connection and before the HTTP request);
    ``bad_http_token``: that function's third token, the one the HTTP request carries,
    is signed with another key, so the HTTP API refuses it (401)."""
    tokens: list[str] = []

    async def viewer_token() -> str:
        forged = bad_http_token and len(tokens) >= 2  # the connect, the resume, then HTTP
        tokens.append(make_token("o" * 32 if forged else AUTH_SECRET))
        return tokens[-1]

    with tempfile.TemporaryDirectory(prefix="bamboo-test-") as data_dir:
        config = ServerConfig(
            host="127.0.0.1",
            port=0,
            data_dir=data_dir,
            log_format="console",
            rate_limit=0,
            auth_secret=AUTH_SECRET if auth else None,
        )
        server = BambooServer(config)
        await server.start()
        proxy = HttpProxy(server.port)
        viewer_url = f"ws://127.0.0.1:{await proxy.start()}" if refuse_http else url(server)
        pub = await BambooClient.connect(
            url(server),
            receive_events=False,
            role="agent",
            backoff_initial=0.05,
            token=make_token(role="agent") if auth else None,
        )
        viewer = await BambooClient.connect(
            viewer_url,
            pub.session_id,
            backoff_initial=3.0,
            token=viewer_token if auth else None,
        )
        try:
            for _ in range(5):
                await pub.publish(Token("before"))
            assert [e.seq for e in await take(viewer, 5, timeout=5)] == [1, 2, 3, 4, 5]
            port = server.port
            await server.stop()
            server = BambooServer(config.replace(port=port))
            await server.start()
            await eventually(lambda: pub.connected)
            for _ in range(added):
                await pub.publish(Token("after"))
            await pub.set_state("closed")
            proxy.refusing = True
            seqs, error = await read_to_the_end(viewer, 15)
            ended: Exception | None = None
            try:
                await viewer.ping()
            except ClientError as exc:
                ended = exc
            headers = {"Authorization": f"Bearer {make_token()}"} if auth else None
            stored = await stored_seqs(server, pub.session_id, 5, headers)
            if auth:
                assert len(tokens) == 3, f"the connect, the resume, the HTTP request: {tokens}"
        finally:
            await viewer.close()
            await pub.close()
            await server.stop()
            await proxy.close()
        return seqs, error, stored, ended


async def test_a_session_closed_while_a_viewer_is_away_does_not_end_events_silently() -> None:
    """Review rev27c2: the session is closed while the viewer is disconnected, with 5
    events appended meanwhile. Its resume is refused with 4409; asked over HTTP, the
    server has events after seq 5: events() has 1..5 of the 10 stored, so it must not
    end as if it had them all."""
    seqs, error, stored, ended = await closed_while_away(added=5)
    assert stored == [6, 7, 8, 9, 10]
    assert seqs == [], seqs
    assert isinstance(error, ConnectionLost), "5 events appended while it was away"
    assert isinstance(ended, ConnectionLost), repr(ended)
    assert "after seq 5 not delivered" in str(error) and error.after_seq == 5
    assert "events?after_seq=5)" in str(error)


async def test_a_session_closed_while_a_viewer_is_away_with_nothing_new_ends_normally() -> None:
    """The same, with nothing appended while the viewer was away: the server says no
    event follows seq 5, so events() ends normally (no false alarm)."""
    seqs, error, stored, ended = await closed_while_away(added=0)
    assert stored == []
    assert seqs == [] and error is None, (seqs, error)
    assert isinstance(ended, SessionEnded), repr(ended)


async def test_a_session_closed_while_a_viewer_is_away_and_the_server_cannot_be_asked() -> None:
    """The same with nothing appended, but the HTTP request answered 503: the client
    cannot tell, so it does not end as if it had everything: ConnectionLost says
    events after seq 5 may be missing."""
    seqs, error, stored, ended = await closed_while_away(added=0, refuse_http=True)
    assert stored == []
    assert seqs == [], seqs
    assert isinstance(ended, ConnectionLost), repr(ended)
    assert isinstance(error, ConnectionLost), "the HTTP API answered 503"
    assert "after seq 5 may not have been delivered" in str(error) and error.after_seq == 5
    assert "(HTTP 503; read them over HTTP" in str(error)
    assert "events?after_seq=5)" in str(error)


async def test_under_auth_a_session_closed_while_a_viewer_is_away_does_not_end_silently() -> None:
    """The check of a session closed while the viewer was away, with auth on: the
    viewer's HTTP request carries its token (Authorization: Bearer), and the server's
    answer (5 events after seq 5) ends events() with ConnectionLost naming seq 5."""
    seqs, error, stored, ended = await closed_while_away(added=5, auth=True)
    assert stored == [6, 7, 8, 9, 10]
    assert seqs == [], seqs
    assert isinstance(error, ConnectionLost), "5 events appended while it was away"
    assert "after seq 5 not delivered" in str(error) and error.after_seq == 5
    assert isinstance(ended, ConnectionLost), repr(ended)


async def test_under_auth_a_session_closed_while_a_viewer_is_away_with_nothing_new() -> None:
    """The same with nothing appended: the server, asked with the viewer's token, has
    no event after seq 5, so events() ends normally and the client with SessionEnded."""
    seqs, error, stored, ended = await closed_while_away(added=0, auth=True)
    assert stored == []
    assert seqs == [] and error is None, (seqs, error)
    assert isinstance(ended, SessionEnded), repr(ended)


async def test_under_auth_a_token_the_http_api_refuses_means_events_may_be_missing() -> None:
    """The same with nothing appended, but the token the HTTP request carries is one the
    server refuses (401): the client cannot tell, so ConnectionLost says the events
    after seq 5 may be missing."""
    seqs, error, stored, ended = await closed_while_away(added=0, auth=True, bad_http_token=True)
    assert stored == []
    assert seqs == [], seqs
    assert isinstance(ended, ConnectionLost), repr(ended)
    assert isinstance(error, ConnectionLost), "the HTTP API refused the token"
    assert "after seq 5 may not have been delivered" in str(error) and error.after_seq == 5
    assert "(HTTP 401; read them over HTTP" in str(error)
