"""A session closed while the Python client has not had all its events: events() must
not end as if it had them all. A resume's replay cut by the close's bound
(``--close-timeout``), a close after a replay read whole, a publish-only client whose
resume meets a close, and a viewer away (a server restart) while the session was
closed, with auth and without, and with the HTTP API unable to answer: ConnectionLost
names the seq after which the HTTP endpoint has the rest, or says events may be
missing; where nothing is missing, events() just ends. Real servers on ephemeral
loopback ports; every wait is bounded."""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

import jwt
import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, ClientError, ConnectionLost, SessionEnded
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.client_backlog_support import publish_many, read_to_the_end, take, url
from tests.instances import eventually
from tests.proxies import HttpProxy
from tests.support import get, run_server


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
    client, SessionEnded or ConnectionLost). The viewer reaches the server through a
    proxy that holds its reconnection until the session is closed: with only its
    backoff to hold it off, a loaded machine's restart outlasted it, and the viewer came
    back to an open session. It is held at the proxy, in one attempt, so that under auth
    it asks its token function once for it. ``refuse_http``: the proxy then answers its
    HTTP request with 503. ``auth``: the server checks tokens, and both clients have one
    of their own (the viewer's from a function, asked before each connection and before
    the HTTP request);
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
        viewer_url = f"ws://127.0.0.1:{await proxy.start()}"
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
            backoff_initial=0.2,
            open_timeout=60,  # its reconnection is held at the proxy meanwhile
            token=viewer_token if auth else None,
        )
        try:
            for _ in range(5):
                await pub.publish(Token("before"))
            assert [e.seq for e in await take(viewer, 5, timeout=5)] == [1, 2, 3, 4, 5]
            port = server.port
            proxy.hold()  # its reconnection waits; the connection open sees the 1012
            await server.stop()
            server = BambooServer(config.replace(port=port))
            await server.start()
            await eventually(lambda: pub.connected)
            for _ in range(added):
                await pub.publish(Token("after"))
            await pub.set_state("closed")
            proxy.refusing = refuse_http
            proxy.release()  # the viewer comes back to a closed session
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
