"""Streamed whole histories (``GET /api/v1/sessions/{id}`` without ``limit`` and
``before``) read their pages in at most half of the page-read slots (server/pages.py):
however many of them are under way, and however long their reads take, a page asked
for on its own (``history`` and ``events``, over HTTP or a WebSocket) finds a slot.

The streams' reads are made slow for certain by a JSONL store whose log of the
streamed session stalls (a FIFO nobody writes to, as a stalled disk): each of them
holds its slot until the store answers or the read deadline. Real server, real sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from bamboo_session.server.app import BambooServer
from bamboo_session.server.manager_config import DEFAULT_READ_SLOTS
from tests.stalled_disks_support import log_as_fifo
from tests.support import attach, get, run_server
from tests.test_server_lifecycle import eventually
from tests.test_whole_history import stored_session

STREAMS = 2 * DEFAULT_READ_SLOTS  # streamed readers at once: more than there are slots
# Generous for a loaded CI machine: a read that finds a slot takes milliseconds. The
# streams' reads are abandoned only at --store-read-timeout, far later.
DEADLINE = 10.0


def ask_whole_history(port: int, session_id: str) -> socket.socket:
    """A peer that asks for a whole history (and waits for it: it will not come)."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.sendall(f"GET /api/v1/sessions/{session_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return peer


def reads_in_slots(server: BambooServer) -> int:
    """Page reads holding a slot now (a figure of the server's own, watched only to
    know that the streams' reads have reached the store)."""
    reads = server.services.page_reads
    return reads.count - reads.slots._value


@pytest.mark.parametrize("read_slots", [DEFAULT_READ_SLOTS, 3])
async def test_streamed_histories_leave_slots_to_pages_asked_for_alone(
    tmp_path: Path, read_slots: int
) -> None:
    # Before: each streamed reader's page read queued for any of the 8 slots, and 100
    # to 200 of them put a history or events page 0.4 to 1.4 s behind; readers whose
    # store reads stall held every slot until their read deadline. With --read-slots 3,
    # they hold one of the three, and the two others serve the rest.
    store = f"jsonl://{tmp_path / 'data'}"
    async with run_server(store=store) as server:
        await stored_session(server, "long", 2000, size=2048)
        expected = await stored_session(server, "short", 10)
    # A new server: the JSONL store reads the long history from its log, not memory.
    async with run_server(store=store, store_read_timeout=60, read_slots=read_slots) as server:
        assert server.services.page_reads.count == read_slots
        async with attach(server, "short") as (viewer, _):
            with log_as_fifo(tmp_path / "data" / "events" / "long.jsonl"):
                loop = asyncio.get_running_loop()
                streams = [
                    await loop.run_in_executor(None, ask_whole_history, server.port, "long")
                    for _ in range(STREAMS)
                ]
                try:
                    # Every stream's request taken up, and their reads at the store.
                    await eventually(
                        lambda: (
                            len(server._open_connections) == STREAMS + 1
                            and reads_in_slots(server) >= read_slots // 2
                        ),
                        DEADLINE,
                    )
                    page, events, history = await asyncio.wait_for(
                        asyncio.gather(
                            get(server, "/api/v1/sessions/short?limit=5"),
                            get(server, "/api/v1/sessions/short/events"),
                            viewer.request({"type": "history", "id": "h"}, "history"),
                        ),
                        DEADLINE,
                    )
                finally:
                    for stream in streams:
                        stream.close()
    assert page[0] == 200 and page[1]["messages"] == expected[-5:], page
    assert events[0] == 200 and len(events[1]["events"]) == 10, events
    assert json.dumps(history["messages"]) == json.dumps(expected), history
