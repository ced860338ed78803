"""The keepalive's look at a slow reader's link (server/link_progress.py): the time in
which the Ping itself went through, behind bytes taken at the floor rate, counts as
the link's life, so that the Pong has a whole ``ping_timeout`` from the look that finds
the Ping through; the next look asks for the Pong. Before, a Ping through just before a
look left its Pong only the rest of that look's time: tests/test_keepalive_slow_download.py
closed 1011 a reader that had taken the whole replay (6 runs in 16 under load).

Real loopback TCP sockets, whose kernel says what the peer acknowledged (Linux
``TCP_INFO``); the looks are given their time, not waited for."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import sys
import time

import pytest

from bamboo_session.server.link_progress import MIN_LINK_RATE, LinkProgress
from bamboo_session.server.replay import kernel_queue

AHEAD = 200 * MIN_LINK_RATE  # bytes written before the Ping: 200 s of the floor rate
PING = b"\x89\x04ping"  # a Ping's six bytes, as link_progress counts them
GUARD = 30.0


@dataclasses.dataclass
class Reads:
    bytes_read: int = 0  # the peer sends nothing here


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO's bytes_acked is Linux's")
async def test_the_look_that_finds_the_ping_through_counts_the_time_it_went_through() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window soon shut
    peer.connect(listener.getsockname())
    server_side, _ = listener.accept()
    listener.close()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, server_side)
    try:
        transport.write(b"x" * AHEAD)  # a replay the peer has yet to take
        progress = LinkProgress(transport, Reads())  # right before the Ping is written
        transport.write(PING)
        # The peer takes it all, the Ping too, before the first look.
        peer.setblocking(False)
        taken, deadline = 0, time.monotonic() + GUARD
        while taken < AHEAD + len(PING):
            assert time.monotonic() < deadline, f"took {taken} bytes"
            try:
                taken += len(peer.recv(65536))
            except BlockingIOError:
                await asyncio.sleep(0.001)
        while transport.get_write_buffer_size() or kernel_queue(server_side.fileno()):
            assert time.monotonic() < deadline, "the peer's TCP acknowledged not all"
            await asyncio.sleep(0.001)  # (its acknowledgements follow its reads)

        first_look = loop.time() + 1.0  # a second in: far more than the floor went
        assert progress.alive(first_look)  # before: the Ping through, taken for no life
        # The Pong is asked for at the next look: nothing moved since, and nothing of
        # what follows the Ping would count.
        assert not progress.alive(first_look + 1.0)
    finally:
        transport.close()
        peer.close()
