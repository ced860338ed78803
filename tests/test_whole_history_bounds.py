"""What streamed whole-history answers (server/whole_history.py, http_stream.py) hold
in the server while their peers do not read, measured with tracemalloc on a real
server: no more than the account of answers not yet taken (a quarter of
``--memory-budget``) and a page; past it, the request is refused with 503, as any
other answer that does not fit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator

from bamboo_session.server.app import BambooServer
from tests.memory_support import KIB, MIB
from tests.support import run_server
from tests.test_memory_bounds_http import WHOLE_ACCOUNT, ask, non_reader, status_of, unread_get
from tests.test_server_lifecycle import eventually
from tests.test_whole_history import http_client_get, stored_session


async def test_peers_that_do_not_read_hold_no_more_than_the_unread_answers_account() -> None:
    # 2 MiB for answers not yet taken; pages of 256 KiB. Each of 24 stalled peers had
    # its first page read before any room was asked for, and kept it, uncounted, while
    # it waited for room (up to --answer-page-timeout): 6 MiB beyond the account, and
    # 400 such peers took a default server to 750 MB.
    page = 256 * KIB
    config = {
        "memory_budget": 8 * MIB,
        "max_page_bytes": page,
        "answer_page_timeout": 60,
        "answer_peer_share": WHOLE_ACCOUNT,  # every peer here is one: 127.0.0.1
    }
    async with run_server(**config) as server:
        await stored_session(server, "held", 2000, size=2 * KIB)  # about 4 MB
        loop = asyncio.get_running_loop()
        path = "/api/v1/sessions/held"
        peers: list[socket.socket] = []
        try:
            # Connected, and their connections made in the server, before the baseline:
            # what 24 connections hold (0.3 to 0.67 MB) is not what the account bounds.
            for _ in range(24):
                peers.append(await loop.run_in_executor(None, non_reader, server.port))
            await eventually(lambda: len(server._open_connections) == len(peers), 30.0)
            gc.collect()
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for peer in peers:
                ask(peer, path)
            held = await held_once_read(server, peers, base)
        finally:
            tracemalloc.stop()
            for peer in peers:
                peer.close()
        limit = server.unread_answers.limit
        assert held < limit + 2 * page, f"{held} bytes held, the account is {limit}"
        # Refused ones were told so (503), and once the peers are gone the rest is served.
        assert (await loop.run_in_executor(None, status_of, server.port, path))[0] in (200, 503)


async def held_once_read(server: BambooServer, peers: list[socket.socket], base: int) -> int:
    """The memory traced beyond ``base`` once the pages for ``peers`` were read: every
    answer has begun, or none more began while pages could be read (a request left
    waiting holds nothing). Measured with no page being read: a second after the
    requests, under load, pages were still read, and their decoded messages (what the
    page-read slots bound, not the account of unread answers) were counted as held."""
    loop = asyncio.get_running_loop()
    seen, ends = -1, loop.time() + 30
    while True:
        async with every_stream_slot(server):
            begun = sum(map(answered_yet, peers))
            if begun == len(peers) or 0 < begun == seen or loop.time() > ends:
                gc.collect()
                return tracemalloc.get_traced_memory()[0] - base
        seen = begun
        await asyncio.sleep(0.1)  # pages waiting for a slot are read meanwhile


@contextlib.asynccontextmanager
async def every_stream_slot(server: BambooServer) -> AsyncIterator[None]:
    """Holds every slot pages of streamed answers are read in (once the reads in them
    have ended): no such page is read meanwhile."""
    reads = server.services.page_reads
    for _ in range(reads.stream_count):
        await reads.stream_slots.acquire()
    try:
        yield
    finally:
        for _ in range(reads.stream_count):
            reads.stream_slots.release()


def answered_yet(peer: socket.socket) -> bool:
    """Whether the answer to ``peer``'s request has begun to arrive (its head is
    written with its first page, or it is a refusal), read without taking it."""
    try:
        return bool(peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def paced_read(port: int, path: str, pause: float) -> bytes:
    """The whole answer to ``path``, read 32 KiB at a time, ``pause`` seconds apart
    (a tiny receive buffer, so that the server's pages wait for the reader); asked
    again after a 503 (busy: the first page finds no room), as its Retry-After says."""
    while True:
        peer = socket.socket()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.settimeout(60)
        with peer:
            peer.connect(("127.0.0.1", port))
            peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := peer.recv(32 * KIB):
                    answer += chunk
                    time.sleep(pause)
        if not answer.startswith(b"HTTP/1.1 503 "):
            return answer
        time.sleep(0.05)


async def test_readers_that_read_take_turns_for_room_and_none_is_dropped() -> None:
    # Room for four pages of 256 KiB at once; twelve readers of about 12 pages each,
    # each taking about 0.1 s per page: a page waits about two pages' time for room,
    # well within the page timeout, if pages get room in turn. Looking for room
    # every 50 ms, pieces that had just left took it back before those that had
    # waited, for a whole answer (over 1 s), and those were dropped as too slow. The
    # turn itself is asserted on the account (test_answer_shares.py::
    # test_pieces_that_fit_their_shares_wait_for_the_account_in_turn); here every
    # reader is served whole end to end, with a page timeout of 4 s: at 1 s, readers
    # in threads of the server's own process, starved of CPU by three other test
    # processes on two cores, were dropped however fair the turns.
    page = 256 * KIB
    config = {
        "memory_budget": 4 * MIB,
        "max_page_bytes": page,
        "answer_page_timeout": 4,
        "answer_peer_share": WHOLE_ACCOUNT,  # every peer here is one: 127.0.0.1
    }
    async with run_server(**config) as server:
        expected = await stored_session(server, "shared", 1500, size=2 * KIB)  # about 3 MB
        path = "/api/v1/sessions/shared"
        loop = asyncio.get_running_loop()
        readers = [
            loop.run_in_executor(None, paced_read, server.port, path, 0.002) for _ in range(12)
        ]
        for answer in await asyncio.gather(*readers):
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"0\r\n\r\n"), "dropped as too slow"
            body = http_body(answer)
            assert json.loads(body)["messages"] == expected
        await eventually(lambda: server.unread_answers.used == 0)


def http_body(answer: bytes) -> bytes:
    """The body of a chunked answer."""
    rest = answer.split(b"\r\n\r\n", 1)[1]
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if not size:
            return body
        body, rest = body + rest[:size], rest[size + 2 :]


async def test_the_end_of_an_answer_does_not_wait_for_room_for_a_page() -> None:
    # Room for 1 MiB of unread answers, pages of 640 KiB; two stalled peers hold about
    # 900 KB of theirs. A history of one small page fits, and so does its end ("]}"):
    # room for a whole page was asked for the end as for any piece, which waited the
    # page timeout and then cut the answer short.
    page = 640 * KIB
    config = {
        "memory_budget": 4 * MIB,
        "max_page_bytes": page,
        "answer_page_timeout": 3,
        "answer_peer_share": WHOLE_ACCOUNT,  # every peer here is one: 127.0.0.1
    }
    async with run_server(**config) as server:
        await stored_session(server, "held", 2000, size=2 * KIB)  # about 4 MB
        expected = await stored_session(server, "short", 5)
        loop = asyncio.get_running_loop()
        path = "/api/v1/sessions/held"
        peers = [await loop.run_in_executor(None, unread_get, server.port, path) for _ in range(2)]
        try:
            await eventually(
                lambda: server.unread_answers.used > server.unread_answers.limit - page
            )
            assert not server.unread_answers.full
            started = time.monotonic()
            response, raw = await asyncio.to_thread(
                http_client_get, server.port, "/api/v1/sessions/short"
            )
            assert response.status == 200 and json.loads(raw)["messages"] == expected
            assert time.monotonic() - started < 2
        finally:
            for peer in peers:
                peer.close()
