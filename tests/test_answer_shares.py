"""One peer's unread HTTP answers hold at most its share of the account of answers not
yet taken by their peers (server/unread_answers.py): a crowd of connections of one peer
that read a byte at a time no longer fills the account, and every other peer's pages
and whole histories are still answered. Real server, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
from typing import Any

from bamboo_session.server.unread_answers import UnreadAnswers
from tests.auth_support import SECRET, bearer, make_token
from tests.memory_support import KIB, MIB
from tests.support import run_server
from tests.test_memory_bounds_http import MISSING, history_page_of, status_of, unread_get
from tests.test_server_lifecycle import eventually
from tests.test_whole_history import stored_session

PAGE = 512 * KIB
# A 16 MiB budget: answers not yet taken may hold 4 MiB, a peer a quarter of that.
CONFIG = {
    "memory_budget": 16 * MIB,
    "max_page_bytes": PAGE,
    "auth_secret": SECRET,
    # The crowd holds its pages for as long as the test lasts.
    "answer_page_timeout": 60,
}
CROWD = 32  # connections of one peer, each holding a page: 16 MiB of demand
# Generous for a loaded CI machine: an answer that is served comes in milliseconds.
DEADLINE = 10.0
STATUS_LINE = len(b"HTTP/1.1 200")


async def trickle_reader(
    port: int, path: str, token: str, statuses: list[bytes], stop: asyncio.Event
) -> bytes:
    """A peer that asks for ``path`` and then reads its answer a byte at a time, a
    byte every 0.2 s (a tiny receive buffer, so that the server's buffer fills), until
    ``stop``: its status line, read at once (and added to ``statuses``), and what it
    trickled after it."""
    loop = asyncio.get_running_loop()
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    peer.setblocking(False)
    with peer:
        await loop.sock_connect(peer, ("127.0.0.1", port))
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
        await loop.sock_sendall(peer, head.encode())
        received = b""
        while len(received) < STATUS_LINE:
            byte = await loop.sock_recv(peer, 1)
            if not byte:
                return received
            received += byte
        statuses.append(received)
        while not stop.is_set():
            byte = await loop.sock_recv(peer, 1)
            if not byte:
                break
            received += byte
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    return received


def read_answer(port: int, path: str, token: str) -> tuple[int, bytes]:
    """A well-behaved peer's GET, read as fast as it comes: its status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request("GET", path, headers=bearer(token))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def answer_of(port: int, path: str, token: str) -> tuple[int, Any]:
    status, body = await asyncio.wait_for(
        asyncio.to_thread(read_answer, port, path, token), DEADLINE
    )
    return status, json.loads(body)


async def test_a_crowd_of_one_peer_reading_a_byte_at_a_time_starves_no_other_peer() -> None:
    # Before: 150 such connections filled the account (every answer of theirs held
    # a page for --answer-page-timeout), and every other peer's page and whole
    # history got 503 until they were dropped.
    async with run_server(**CONFIG) as server:
        await stored_session(server, "crowded", 1000, size=2 * KIB, user_id="mallory")
        expected = await stored_session(server, "mine", 1000, size=KIB, user_id="alice")
        mallory, alice = make_token("mallory"), make_token("alice")
        stop = asyncio.Event()
        statuses: list[bytes] = []
        path = "/api/v1/sessions/crowded"
        crowd = [
            asyncio.create_task(trickle_reader(server.port, path, mallory, statuses, stop))
            for _ in range(CROWD)
        ]
        try:
            # Every one of the crowd's requests answered (a page held) or refused.
            await eventually(lambda: len(statuses) == CROWD, 30)
            answers = server.unread_answers
            assert answers.used <= answers.limit
            # The other peer's whole history, a page of it, and a page of its events.
            whole, page, events = [
                await answer_of(server.port, f"/api/v1/sessions/mine{query}", alice)
                for query in ("", "?limit=1000", "/events")
            ]
            assert [whole[0], page[0], events[0]] == [200, 200, 200], (whole, page, events)
            assert whole[1]["messages"] == expected
            assert page[1]["messages"] == expected[-len(page[1]["messages"]) :]
            assert events[1]["events"]
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*crowd), DEADLINE)
        # The crowd was served up to its share, then told it holds too much.
        assert b"HTTP/1.1 200" in statuses and b"HTTP/1.1 429" in statuses, statuses
        await eventually(lambda: server.unread_answers.used == 0, 10)


async def test_without_auth_the_connections_of_one_address_are_one_peer() -> None:
    # Answers not yet taken may hold 1 MiB, one peer's a quarter of it. One
    # connection that does not read holds about 900 KB of a page (its first answer
    # always fits): the next big answer to its address is refused, while the
    # account could still take it, and says it is that peer's own doing.
    async with run_server(memory_budget=4 * MIB, max_page_bytes=2 * MIB) as server:
        page = await history_page_of(server, 8, 120_000)
        loop = asyncio.get_running_loop()
        stalled = await loop.run_in_executor(None, unread_get, server.port, page)
        try:
            await eventually(lambda: server.unread_answers.used > 512 * KIB)
            assert not server.unread_answers.full
            assert await loop.run_in_executor(None, status_of, server.port, page) == (429, "1")
            # Refused before the store is read, as when the account is full.
            missing = await loop.run_in_executor(None, status_of, server.port, MISSING)
            assert missing == (429, "1")
            # Small answers stay served. A HEAD of the page is told what its GET is
            # told, before the store is read: it was let through to read the page for
            # an answer of 200, which the GET would not get.
            health = await loop.run_in_executor(None, status_of, server.port, "/healthz")
            assert health[0] == 200
            head = await loop.run_in_executor(None, status_of, server.port, page, "HEAD")
            assert head == (429, "1")
        finally:
            stalled.close()
        await eventually(lambda: server.unread_answers.used == 0)
        assert (await loop.run_in_executor(None, status_of, server.port, page))[0] == 200
        metrics = server.metrics.render().decode()
        assert 'bamboo_answers_refused_total{full="peer"} 3.0' in metrics


async def test_a_full_share_is_refused_429_a_full_account_503() -> None:
    refused: list[str] = []
    account = UnreadAnswers(1000, 400, refused.append)
    mine, theirs = account.share("addr:10.0.0.1"), account.share("addr:10.0.0.2")
    assert account.share("addr:10.0.0.1") is mine  # one share for all its connections
    assert mine.refusal(5000) is None  # a peer's first answer always fits
    mine.charge(350)
    assert mine.refusal() is None  # without a size: is any but a small one refused?
    over_share = mine.refusal(100)
    assert over_share is not None and over_share.status_code == 429
    assert over_share.headers["Retry-After"] == "1"
    assert mine.refusal(50) is None
    theirs.charge(400)
    theirs.charge(250)  # a page that came out larger than the room taken for it
    # The account full: every peer is refused, over its share or not, with 503.
    for refusal in (mine.refusal(10), mine.refusal(), theirs.refusal()):
        assert refusal is not None and refusal.status_code == 503
    mine.release(350)
    over_share = theirs.refusal()
    assert over_share is not None and over_share.status_code == 429
    assert refused == ["peer", "server", "server", "server", "peer"]
    theirs.release(650)
    assert account.used == 0


async def test_a_piece_waiting_on_its_full_share_holds_up_no_other_peers_piece() -> None:
    account = UnreadAnswers(1000, 300)
    crowd, other = account.share("user:mallory"), account.share("user:alice")
    crowd.charge(300)
    crowds = crowd.room(100)
    assert not crowds.done()  # its share is full: it waits for its own peer's bytes
    others = other.room(100)
    assert others.done()  # not behind it
    assert (account.used, other.used) == (400, 100)
    crowd.release(300)
    assert crowds.done() and crowd.used == 100
    crowd.release(100)
    other.release(100)
    assert account.used == 0


async def test_pieces_that_fit_their_shares_wait_for_the_account_in_turn() -> None:
    account = UnreadAnswers(1000, 500)
    first, second, third = (account.share(f"user:{name}") for name in "abc")
    first.charge(500)
    second.charge(400)
    waiting = third.room(200)  # 1,100 bytes: the account cannot take it
    later = second.room(50)  # would fit, but comes after a piece that waits
    assert not waiting.done() and not later.done()
    first.release(500)
    assert waiting.done() and later.done()
    assert (account.used, second.used, third.used) == (650, 450, 200)
    # A piece given up before it got room leaves its place, and charges nothing.
    first.charge(350)
    gone = first.room(100)
    assert not gone.done()
    first.give_up_room(100, gone)
    assert gone.cancelled() and account.used == 1000
    # One given up after it got room gives its charge back.
    second.release(450)
    given = third.room(100)
    assert given.done()
    third.give_up_room(100, given)
    assert (account.used, third.used) == (550, 200)


async def test_a_request_with_two_authorizations_is_still_answered_400() -> None:
    # Whose share an answer is charged to is looked for before the request is
    # checked: an ambiguous Authorization there must not be taken for a failure.
    async with run_server(auth_secret=SECRET) as server:
        token = make_token("alice")
        head = (
            "GET /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        answer = await asyncio.to_thread(raw_exchange, server.port, head.encode())
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"more than one Authorization header" in answer


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as peer:
        peer.sendall(request)
        answer = b""
        while chunk := peer.recv(65536):
            answer += chunk
    return answer
