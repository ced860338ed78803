"""Room made among the unread answers drops only answers taken behind pace
(server/unread_answers.py ``UnreadAnswers.answers_to_drop``): a peer that takes its
answer at a pace that finishes it in its time keeps it, however many peers ask for
room; one that stalls loses it. Real server, real sockets; each peer an address of
its own on loopback (127.0.0.0/8), as an attacker's many addresses are.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

from tests.support import run_server
from tests.test_answer_room import all_behind_pace, dropped_answers, hold_unread
from tests.test_http_read_limits import a_log, head, in_thread
from tests.test_server_lifecycle import eventually
from tests.test_whole_history import stored_session

MIB = 1 << 20
HOLDERS = 9  # addresses that each hold a page a little past the equal part they make
DEADLINE = 20.0


def hold_from(address: str, port: int, path: str) -> tuple[socket.socket, int]:
    """A peer at ``address`` that asks for ``path`` and reads its status line, no more."""
    return hold_unread(port, path, address=address, timeout=DEADLINE)


def read_paced(
    address: str,
    port: int,
    path: str,
    started: threading.Event,
    stall_after: int | None,
    resume: threading.Event,
) -> tuple[int, int, int]:
    """A peer at ``address`` reading its page at about 1 MiB/s (an 8 Mbit/s link), or,
    with ``stall_after``, that stops reading once it has that many bytes, until
    ``resume``, then reads the rest at once: its status, the body's bytes it got and
    its Content-Length."""
    answer = b""
    with socket.socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        peer.bind((address, 0))
        peer.settimeout(DEADLINE)
        peer.connect(("127.0.0.1", port))
        peer.sendall(head(path))
        try:
            while stall_after is None or len(answer) < stall_after:
                chunk = peer.recv(16384)
                if not chunk:
                    break
                answer += chunk
                started.set()
                time.sleep(0.015)
            else:
                started.set()
                assert resume.wait(DEADLINE)
                while chunk := peer.recv(1 << 20):
                    answer += chunk
        except ConnectionResetError:
            pass
    head_part, _, body = answer.partition(b"\r\n\r\n")
    length = int(head_part.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return int(head_part[9:12]), len(body), length


async def holders_and_reader(server: Any, stall_after: int | None) -> tuple[Any, ...]:
    """``HOLDERS`` addresses hold pages of about 0.8 MiB unread, until they are behind
    pace; then a reader asks for its page of about 1 MiB, and once it has begun reading,
    another address asks for a page of about 0.6 MB, which the account cannot take:
    the reader's (status, bytes, length), the asker's status, the answers dropped."""
    page = await a_log(server, "page", 200)
    held = await a_log(server, "held", 90)
    smaller = (await a_log(server, "smaller", 60)).replace("limit=1000", "limit=60")
    holders: list[socket.socket] = []
    started, resume = threading.Event(), threading.Event()
    try:
        for n in range(HOLDERS):
            peer, status = await in_thread(hold_from, f"127.0.2.{n + 1}", server.port, held)
            holders.append(peer)
            assert status == 200
        for n in range(HOLDERS):
            await eventually(lambda n=n: all_behind_pace(server, f"addr:127.0.2.{n + 1}"))
        reader = asyncio.ensure_future(
            in_thread(read_paced, "127.0.1.1", server.port, page, started, stall_after, resume)
        )
        assert await in_thread(started.wait, DEADLINE)
        if stall_after is not None:
            await eventually(lambda: all_behind_pace(server, "addr:127.0.1.1"))
        else:
            await asyncio.sleep(0.05)
        dropped = dropped_answers(server)
        peer, asked = await in_thread(hold_from, "127.0.3.1", server.port, smaller)
        holders.append(peer)
        dropped = dropped_answers(server) - dropped
        resume.set()
        return await reader, asked, dropped
    finally:
        resume.set()
        for peer in holders:
            peer.close()


async def test_many_addresses_asking_for_room_cut_no_page_read_at_pace() -> None:
    # Nine addresses each hold a page unread, a little past the equal part of the
    # account that they make small (eleven peers: 760 kB each), and a tenth asks for
    # room. The page of a reader taking it at 1 MiB/s was the largest held, and was
    # cut for it (270,640 of 1,040,481 bytes); at the default budget some 80 addresses
    # do it, trivial from an IPv6 /56. Now it is never dropped while on pace: the room
    # comes from the pages held behind it.
    async with run_server(memory_budget=32 * MIB) as server:
        (status, got, length), asked, dropped = await holders_and_reader(server, None)
        assert status == 200
        assert got == length, (got, length)
        assert asked == 200
        assert dropped >= 1
        assert server.unread_answers.used <= server.unread_answers.limit


async def test_a_reader_that_stalls_is_still_dropped_for_room() -> None:
    # The same reader takes the first 32 KiB of its page and stops: once it is behind
    # the pace that takes its page in its time, it holds the most and loses its page
    # for the asker's, its connection closed before the page's end.
    async with run_server(memory_budget=32 * MIB) as server:
        (status, got, length), asked, dropped = await holders_and_reader(server, 32 * 1024)
        assert status == 200
        assert got < length, (got, length)
        assert asked == 200
        assert dropped == 1


def read_streamed_at(port: int, path: str, rate: float, stop: threading.Event) -> int:
    """A peer at 127.0.1.1 that reads a streamed answer at ``rate`` bytes a second,
    until ``stop``: the bytes it got."""
    got = 0
    with socket.socket() as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        peer.bind(("127.0.1.1", 0))
        peer.settimeout(DEADLINE)
        peer.connect(("127.0.0.1", port))
        peer.sendall(head(path))
        start = time.monotonic()
        while not stop.is_set():
            chunk = peer.recv(4096)
            if not chunk:
                break
            got += len(chunk)
            early = got / rate - (time.monotonic() - start)
            if early > 0:
                time.sleep(early)
    return got


async def test_a_streamed_answer_read_well_above_pace_is_never_behind_it() -> None:
    # Pages of 256 KiB, 20 s each: the pace is 13 kB/s, and this peer reads at five
    # times that. Each page is written as soon as the previous one has left the
    # server's buffer, its last 128 KiB still in the kernel's, unacknowledged: counted
    # against the new page, they kept it at nothing taken for two seconds, and the
    # peer was behind pace (so its page could be dropped for room) a quarter of the time.
    config = {"memory_budget": 32 * MIB, "max_page_bytes": 256 * 1024}
    async with run_server(**config) as server:
        await stored_session(server, "streamed", 4000, size=2 * 1024)
        stop = threading.Event()
        path = "/api/v1/sessions/streamed"
        reader = asyncio.ensure_future(in_thread(read_streamed_at, server.port, path, 64e3, stop))
        answers = server.unread_answers.share("addr:127.0.1.1")
        loop = asyncio.get_running_loop()
        behind = looked = 0
        try:
            until = loop.time() + 5
            while loop.time() < until:
                await asyncio.sleep(0.05)
                now = loop.time()
                for holder in answers.holders:
                    looked += 1
                    behind += bool(holder.behind_pace(now))
        finally:
            stop.set()
            got = await reader
        assert got > 256 * 1024  # past its first page
        assert looked > 50
        assert behind == 0, f"behind pace at {behind} of {looked} looks"
