"""Pages a peer draws cost its read allowance (server/read_allowance.py), shared by all
its connections and requests, as its replays do: ``history`` and ``events`` over
WebSocket, and the HTTP API's pages. A peer that reconnects in a loop, or asks over
HTTP again and again, gets the burst and the rate, not a fresh allowance each time;
another address or user is not held up by its debt, and a peer within its allowance
waits for nothing.

Each test measures what the peer got over the time it asked, against what the rate
allows in that time, with a margin of pages: the bound, never a speed."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bamboo_session.server.limits import REPLY_SHARE
from tests.auth_support import SECRET, make_token
from tests.support import attach, run_server
from tests.test_replay_allowance import metric

MESSAGES = 40
CONTENT = "x" * 10_000  # a message's JSON is a little over 10 kB: a log of about 400 kB
PAGE = MESSAGES * len(CONTENT)  # one page holds the whole log (--max-page-bytes: 1 MiB)
# The byte rate's figures, which a peer's pages share at a sixteenth of their size:
# 160 kB of pages a second, 320 kB at once (less than one page).
RATE, BURST = 10_000, 20_000
LIMITS = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": BURST}
OTHER_ADDRESS = "127.0.0.2"  # loopback too: another peer without auth


def allowed(elapsed: float, burst: int = BURST, pages: int = 2) -> float:
    """The most bytes of pages a peer may get in ``elapsed`` seconds: its burst and the
    rate, at a sixteenth, and ``pages`` more (a page is charged once sent, whole)."""
    return (burst + RATE * elapsed) * REPLY_SHARE + pages * PAGE * 1.1


async def a_log(server: Any, session_id: str | None = None, **hello: Any) -> str:
    """A session holding MESSAGES messages of 10 kB (its log and history): its id."""
    async with attach(server, session_id, create=True, **hello) as (_, welcome):
        session_id = welcome["session"]["id"]
    message = {"type": "message", "message": {"role": "user", "content": CONTENT}}
    await server.manager.append_events(session_id, [(message, None)] * MESSAGES)
    return session_id


@contextlib.asynccontextmanager
async def peer_from(
    server: Any, session_id: str, address: str = "127.0.0.1", **hello: Any
) -> AsyncIterator[ClientConnection]:
    """A WebSocket peer from ``address`` that has said ``hello`` and read ``welcome``;
    it hangs up without a closing handshake (as a peer in a hurry does: the server,
    not reading a peer in debt, would take the close timeout to answer one)."""
    url = f"ws://127.0.0.1:{server.port}/api/v1/stream/{session_id}"
    subprotocols: Any = ["bamboo.v1"]
    ws = await connect(url, subprotocols=subprotocols, local_addr=(address, 0))
    try:
        await ws.send(json.dumps({"type": "hello", **hello}))
        welcome = json.loads(await ws.recv())
        assert welcome["type"] == "welcome", welcome
        yield ws
    finally:
        ws.transport.abort()
        await ws.wait_closed()


async def pages_over_websocket(
    server: Any, session_id: str, stay: float, address: str = "127.0.0.1", **hello: Any
) -> int:
    """A peer that connects, asks for 100 pages of the whole log at once, takes what
    comes within ``stay`` seconds and hangs up: the bytes of the pages it got. Every
    reply it got is a page: nothing is refused."""
    got = 0
    async with peer_from(server, session_id, address, **hello) as ws:
        for i in range(100):
            await ws.send(json.dumps({"type": "events", "id": i, "after_seq": 0}))
        deadline = time.monotonic() + stay
        while (left := deadline - time.monotonic()) > 0:
            try:
                data = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                break
            frame = json.loads(data)
            assert frame["type"] in ("events", "presence"), frame
            if frame["type"] == "events":
                assert len(frame["events"]) == MESSAGES
                got += len(data)
    return got


def http_page(
    port: int, path: str, address: str = "127.0.0.1", headers: dict[str, str] | None = None
) -> tuple[int, bytes, http.client.HTTPResponse]:
    """A blocking GET from ``address`` (run it in a thread): status, body, answer."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=30, source_address=(address, 0)
    )
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.read(), answer
    finally:
        connection.close()


def http_head(port: int, path: str) -> int:
    """A blocking HEAD (run it in a thread): its status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("HEAD", path)
        return connection.getresponse().status
    finally:
        connection.close()


def check_refusal(status: int, body: bytes, answer: http.client.HTTPResponse) -> None:
    """A 429 of the read allowance: ``rate_limited``, and a whole number of seconds to
    wait in ``Retry-After``."""
    assert status == 429, (status, body[:200])
    assert json.loads(body)["error"]["code"] == "rate_limited"
    retry_after = answer.getheader("Retry-After")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1


PATHS = {
    "events": "/api/v1/sessions/{}/events?after_seq=0",
    "history-page": "/api/v1/sessions/{}?limit=1000",
    "whole-history": "/api/v1/sessions/{}",
}


async def test_a_peer_reconnecting_in_a_loop_for_pages_is_held_to_its_rate() -> None:
    """For 3 s, a peer connects, pipelines 100 ``events`` requests for the whole log,
    takes what comes within 0.2 s, hangs up and does it again. All its connections
    together get the burst and the rate: before, each connection's allowance started
    full, and every reconnect drew a page at once (a fresh 320 kB)."""
    async with run_server(**LIMITS) as server:
        session_id = await a_log(server)
        started, drawn, rounds = time.monotonic(), 0, 0
        while time.monotonic() - started < 3.0:
            drawn += await pages_over_websocket(server, session_id, stay=0.2)
            rounds += 1
        elapsed = time.monotonic() - started
        assert drawn <= allowed(elapsed), (drawn, rounds)
        assert drawn >= PAGE, "the burst's page came"
        assert await metric(server, "bamboo_page_wait_seconds_total") > 1.0


@pytest.mark.parametrize("kind", list(PATHS))
async def test_a_peer_asking_the_http_api_again_and_again_is_held_to_its_rate(kind: str) -> None:
    """For 3 s, four threads of one peer GET a page (or the whole history) as fast as
    they can. What they get, all together, is within the burst and the rate (and a
    page each, charged once read); the rest is 429 with ``Retry-After``. Before, the
    HTTP API was not charged at all: tens of megabytes a second."""
    async with run_server(**LIMITS) as server:
        session_id = await a_log(server)
        path = PATHS[kind].format(session_id)
        got, refused = [], []

        def ask_for(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                status, body, answer = http_page(server.port, path)
                if status == 200:
                    got.append(len(body))
                else:
                    check_refusal(status, body, answer)
                    refused.append(status)
                time.sleep(0.01)

        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(ask_for, 3.0) for _ in range(4)))
        elapsed = time.monotonic() - started
        assert sum(got) <= allowed(elapsed, pages=4 + 2), (len(got), len(refused))
        assert got, "the burst's page came"
        assert refused
        assert await metric(server, "bamboo_http_rate_limited_total") == len(refused)


async def test_a_whole_history_longer_than_the_allowance_is_streamed_at_the_rate() -> None:
    """A whole history of 400 kB, streamed in pages of 20 kB, costs 25 kB of an
    allowance of 10 kB: its later pages wait for the debt, each before it is read, and
    the answer comes whole, at the rate (about 1.4 s)."""
    limits = {"rate_limit_bytes": 10_000, "rate_limit_bytes_burst": 10_000}
    async with run_server(max_page_bytes=20_000, **limits) as server:
        session_id = await a_log(server)
        started = time.monotonic()
        status, body, _ = await asyncio.to_thread(
            http_page, server.port, f"/api/v1/sessions/{session_id}"
        )
        elapsed = time.monotonic() - started
        assert status == 200
        assert [m["content"] for m in json.loads(body)["messages"]] == [CONTENT] * MESSAGES
        # All but the burst and the last page (charged once read, after its wait).
        assert elapsed >= (len(body) / REPLY_SHARE - 10_000 - 1_500) / 10_000 * 0.9, elapsed
        assert await metric(server, "bamboo_page_wait_seconds_total") > 1.0


@pytest.mark.parametrize("other", ["address", "user"])
async def test_a_peer_in_debt_does_not_hold_up_another(other: str) -> None:
    """Mallory draws pages over WebSocket until its allowance (3.2 MB of pages) is
    spent, and its requests wait or are refused. Alice, from another address (without
    auth) or as another user (under auth), gets 2.4 MB of pages at once, over both."""
    limits = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": 200_000}
    config = dict(limits, auth_secret=SECRET) if other == "user" else limits
    async with run_server(**config) as server:
        peers = {}
        for name, address in (("mallory", "127.0.0.1"), ("alice", OTHER_ADDRESS)):
            if other == "user":
                auth = make_token(name)
                session_id = await a_log(server, f"{name}-log", token=auth)
                hello, headers = {"token": auth}, {"Authorization": f"Bearer {auth}"}
                address = "127.0.0.1"
            else:
                session_id, hello, headers = await a_log(server), {}, {}
            peers[name] = session_id, address, hello, headers
        session_id, address, hello, headers = peers["mallory"]
        path = PATHS["events"].format(session_id)
        drawn = await pages_over_websocket(server, session_id, 1.0, address, **hello)
        assert drawn <= allowed(1.0, burst=200_000)
        status, body, answer = await asyncio.to_thread(
            http_page, server.port, path, address, headers
        )
        check_refusal(status, body, answer)  # mallory is in debt
        # Held up by mallory's debt, alice's pages would wait it out (or be refused over
        # HTTP). The debt is made 10 s, as a mallory who kept drawing would make it, so
        # that a hold-up is told apart from the time 2.4 MB take on a loaded machine by
        # what is measured, not by a wall time of 1 s.
        key = "user:mallory" if other == "user" else "addr:127.0.0.1"
        mallorys = server.services.read_allowances.of(key)
        assert mallorys is not None
        mallorys.charge(int(10 * RATE * REPLY_SHARE))
        started = time.monotonic()  # before the debt is read: a hold-up takes >= debt
        debt = mallorys.debt()

        session_id, address, hello, headers = peers["alice"]
        path = PATHS["events"].format(session_id)
        async with peer_from(server, session_id, address, **hello) as ws:
            for i in range(3):
                await ws.send(json.dumps({"type": "events", "id": i, "after_seq": 0}))
            for i in range(3):
                reply = json.loads(await asyncio.wait_for(ws.recv(), 2 * debt))
                while reply["type"] == "presence":
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 2 * debt))
                assert reply["type"] == "events" and reply["id"] == i
        for _ in range(3):
            status, _, _ = await asyncio.to_thread(http_page, server.port, path, address, headers)
            assert status == 200
        assert time.monotonic() - started < debt, f"held up by mallory's {debt:.1f} s"


async def test_pages_within_the_allowance_wait_for_nothing() -> None:
    """A peer whose pages stay within its burst (3.2 MB of pages here) gets 3 pages
    over WebSocket and 3 over HTTP (2.4 MB) at once: no wait, no 429."""
    limits = {"rate_limit_bytes": RATE, "rate_limit_bytes_burst": 200_000}
    async with run_server(**limits) as server:
        session_id = await a_log(server)
        # No wait is told by the server's measure of it, not by a wall time.
        async with peer_from(server, session_id) as ws:
            for i in range(3):
                await ws.send(json.dumps({"type": "events", "id": i, "after_seq": 0}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert reply["type"] == "events" and len(reply["events"]) == MESSAGES
        for kind in ("events", "history-page", "whole-history"):
            path = PATHS[kind].format(session_id)
            status, _, _ = await asyncio.to_thread(http_page, server.port, path)
            assert status == 200, kind
        assert await metric(server, "bamboo_page_wait_seconds_total") == 0.0
        assert await metric(server, "bamboo_http_rate_limited_total") == 0.0


async def test_every_page_of_the_session_api_is_charged_and_nothing_else_is() -> None:
    """Each page of the session API, a HEAD's included, costs the peer's allowance: the
    list alone takes it into debt here (a page of 50 sessions' metadata, of a burst of
    1 kB), and then every request for a page is 429, the list and the whole history's
    HEAD too; the endpoints that read no page (/healthz, /metrics) are answered."""
    limits = {"rate_limit_bytes": 1_000, "rate_limit_bytes_burst": 1_000}
    async with run_server(**limits) as server:
        session_id = await a_log(server)
        for n in range(50):
            await server.manager.create_session(session_id=f"s{n}", title="t" * 300)
        status, body, _ = await asyncio.to_thread(http_page, server.port, "/api/v1/sessions")
        assert status == 200 and len(json.loads(body)["sessions"]) == 51
        for path in [*(p.format(session_id) for p in PATHS.values()), "/api/v1/sessions"]:
            status, body, answer = await asyncio.to_thread(http_page, server.port, path)
            check_refusal(status, body, answer)
        path = f"/api/v1/sessions/{session_id}"
        assert await asyncio.to_thread(http_head, server.port, path) == 429
        for path in ("/healthz", "/metrics", "/api/v1/stats"):
            assert (await asyncio.to_thread(http_page, server.port, path))[0] == 200
        assert await metric(server, "bamboo_http_rate_limited_total") == 5


async def test_a_head_costs_what_its_get_reads() -> None:
    """A HEAD of a page is answered without the body, but the page was read: it costs
    the allowance as its GET does, and the next request is 429."""
    async with run_server(**LIMITS) as server:
        session_id = await a_log(server)
        path = PATHS["events"].format(session_id)
        assert await asyncio.to_thread(http_head, server.port, path) == 200
        check_refusal(*await asyncio.to_thread(http_page, server.port, path))


async def test_a_page_of_another_origin_may_read_when_to_ask_again() -> None:
    """Under auth any origin may read the session API: a 429 names the origin, and
    exposes ``Retry-After`` to the page's code (not a header a page may read unless
    named)."""
    async with run_server(auth_secret=SECRET, **LIMITS) as server:
        auth = make_token("alice")
        session_id = await a_log(server, "alice-log", token=auth)
        headers = {"Authorization": f"Bearer {auth}", "Origin": "https://app.example"}
        path = PATHS["events"].format(session_id)
        status, _, answer = await asyncio.to_thread(
            http_page, server.port, path, "127.0.0.1", headers
        )
        assert status == 200 and answer.getheader("Access-Control-Expose-Headers") is None
        status, body, answer = await asyncio.to_thread(
            http_page, server.port, path, "127.0.0.1", headers
        )
        check_refusal(status, body, answer)
        assert answer.getheader("Access-Control-Allow-Origin") == "https://app.example"
        assert answer.getheader("Access-Control-Expose-Headers") == "Retry-After"
