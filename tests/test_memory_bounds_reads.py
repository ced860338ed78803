"""Reading costs what is asked, measured with tracemalloc around real requests on a
real server, over a history of large messages: attach, resume and a history page of one
read about what they return; a page waiting for a slow reader is held once (as its
encoded bytes), and an idle viewer does not hold its last replay page.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bamboo_session.server.app import BambooServer
from bamboo_session.server.connection import Connection
from tests.memory_support import KIB, MIB
from tests.support import attach, run_server
from tests.test_server_lifecycle import eventually
from tests.test_wire_floods import masked_frame, upgraded_socket

T = TypeVar("T")


async def peak_during(action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What ``action`` returns, and the most memory it held above where it started."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = await action()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


BIG = 900_000
COUNT = 24  # 24 x 900 KB: about 21 MB of history; reading it all would hold more


async def test_attach_and_resume_read_only_what_they_replay(tmp_path: Path) -> None:
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path) as server:  # a restart: nothing cached

        async def hello() -> dict[str, Any]:
            async with attach(server, "big") as (_, welcome):
                return welcome

        welcome, peak = await peak_during(hello)
        assert welcome["session"]["message_count"] == COUNT
        assert peak < 2 * BIG, f"attach held {peak} bytes"

        async def resume_one() -> dict[str, Any]:
            async with attach(server, "big", last_seq=COUNT - 1) as (peer, w):
                assert w["replay"] == 1
                return await peer.recv_type("event")

        replayed, peak = await peak_during(resume_one)
        assert replayed["seq"] == COUNT
        # One event's copies on both ends (line, frame, client's str and object).
        assert peak < 8 * BIG, f"resuming for one event held {peak} bytes"


async def test_history_of_one_reads_about_one_message(tmp_path: Path) -> None:
    # Needs a store whose get_history_page reads about what it returns (the JSONL
    # backend's history cache, on its own branch).
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path) as server, attach(server, "big") as (peer, _):

        async def history() -> dict[str, Any]:
            return await peer.request({"type": "history", "id": "h", "limit": 1}, "history")

        reply, peak = await peak_during(history)
        assert len(reply["messages"]) == 1 and reply["has_more"]
        assert peak < 8 * BIG, f"history limit=1 held {peak} bytes"


async def fill_with_large_messages(data_dir: Path) -> None:
    # 21 MB through one connection: at the default byte rate, 9 s of set-up.
    async with run_server(data_dir, durability="os", rate_limit_bytes=0) as server:
        async with attach(server, "big", create=True) as (peer, _):
            for i in range(COUNT):
                message = {"role": "assistant", "content": f"{i:02}" + "b" * BIG}
                await peer.request({"type": "message", "id": i, "message": message}, "ack")


async def test_a_reply_waiting_for_a_slow_reader_is_held_once(tmp_path: Path) -> None:
    """A page of history waiting in a send queue is kept as its encoded bytes only, not
    beside its decoded messages (which doubled what unread replies held)."""
    await fill_with_large_messages(tmp_path)
    async with run_server(tmp_path, send_queue_bytes=64 * MIB, memory_budget=256 * MIB) as server:
        loop = asyncio.get_running_loop()
        peer = await loop.run_in_executor(None, upgraded_socket, server.port, "/api/v1/stream/big")
        try:
            hello = json.dumps({"type": "hello"}).encode()
            await loop.run_in_executor(None, peer.sendall, masked_frame(hello, 0x1))
            await eventually(lambda: server.manager.budget.used == 0)
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                pages = 20  # one 900 KB message each, never read (the kernel takes a few)
                requests = b"".join(
                    masked_frame(json.dumps({"type": "history", "id": n, "limit": 1,
                                             "before": COUNT - n}).encode(), 0x1)
                    for n in range(pages)
                )  # fmt: skip
                # A ping behind them: the reader takes it once every page is queued (it
                # answers one frame at a time), with no page being read. A fixed wait
                # was not always enough under load: a page read then, decoded, was
                # counted as held.
                ping = masked_frame(b'{"type":"ping","id":"p"}', 0x1)
                await loop.run_in_executor(None, peer.sendall, requests + ping)
                conn = server_side(server)
                await eventually(lambda: conn.frames_in == 1 + pages + 1, 30.0)
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
            queued = server.manager.budget.used
            assert queued >= 8 * BIG, "the pages wait in the send queue"
            # The queued bytes, plus what the transport has taken and the last page read.
            assert held < 1.5 * queued, f"{held} bytes held for {queued} queued"
        finally:
            peer.close()


def server_side(server: BambooServer) -> Connection:
    """The server's half of its one open WebSocket connection."""
    (ws,) = server._open_connections
    (conn,) = [o for o in gc.get_referrers(ws) if isinstance(o, Connection)]
    return conn


async def test_an_idle_viewer_does_not_hold_its_last_replay_page(tmp_path: Path) -> None:
    await fill_with_large_messages(tmp_path)
    # A restart, and a ring too small for one event: replays read the store, and what
    # they read stays nowhere (a ring big enough would keep the last event, by design).
    async with run_server(tmp_path, ring_bytes=64 * KIB) as server:
        async with contextlib.AsyncExitStack() as stack:
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                for _ in range(5):
                    peer, welcome = await stack.enter_async_context(
                        attach(server, "big", last_seq=COUNT - 2)
                    )
                    assert welcome["replay"] == 2
                    for _ in range(2):
                        await peer.recv_type("event")
                await asyncio.sleep(0.2)  # replays done; five viewers idle
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
        assert held < 2 * BIG, f"five idle viewers hold {held} bytes"
