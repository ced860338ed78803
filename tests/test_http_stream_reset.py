"""A whole history streamed over HTTP (``GET /api/v1/sessions/{id}``, chunked) whose peer
resets once the answer has begun: the page read under way for it is given up when the
reset comes, its slot free at once, as for a page read before the answer's head
(tests/test_http_reset_storm.py). Left to end on its own, it held its slot for as long
as the store took (up to ``--store-read-timeout``): a few peers that asked for a long
history and reset held every slot streamed answers may hold, and every live peer's
whole history waited behind them, then got 503. On a real server (ephemeral port, real
sockets), the store's later page reads stalled as on a slow disk."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from bamboo_session.persistence import HistoryPage
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.gated_reads import GatedReads
from tests.instances import eventually
from tests.support import attach, get

READ_SLOTS = 4  # streamed answers may hold half of them
STREAM_SLOTS = READ_SLOTS // 2
MESSAGES = 6
PAGE_BYTES = 1024  # the least --max-page-bytes: a page or two of messages each
STORE_READ_TIMEOUT = 120.0  # so that the reads held are not abandoned for their time


class StalledLaterPages(GatedReads):
    """The memory store, whose reads of session ``slow`` past its first page wait, as
    on a stalled disk, until ``gate`` is set (``held`` of them meanwhile)."""

    async def get_history_from(
        self,
        session_id: str,
        start: int,
        limit: int,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        if session_id == "slow" and start > 0:
            await self.wait_for_gate()
        return await super().get_history_from(
            session_id, start, limit, epoch=epoch, max_bytes=max_bytes
        )


def ask_and_read_head(port: int, path: str) -> socket.socket:
    """A peer that has asked for ``path`` and read the answer's head (its body begun),
    set to reset when closed (SO_LINGER 0)."""
    peer = socket.create_connection(("127.0.0.1", port), timeout=30)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = peer.recv(65536)
        assert chunk, f"no answer's head: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:100]
    return peer


async def with_messages(server: BambooServer, session_id: str) -> None:
    async with attach(server, session_id, create=True) as (peer, _):
        for i in range(MESSAGES):
            message = {"role": "user", "content": f"m{i}-" + "x" * 500}
            await peer.request({"type": "message", "id": i, "message": message}, "ack")


async def test_a_streamed_answer_whose_peer_resets_frees_its_slot(tmp_path: Path) -> None:
    storage = StalledLaterPages()
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path),
        rate_limit=0,
        read_slots=READ_SLOTS,
        store_read_timeout=STORE_READ_TIMEOUT,
        max_page_bytes=PAGE_BYTES,
    )
    server = BambooServer(config, storage)
    await server.start()
    try:
        await with_messages(server, "chat")
        await with_messages(server, "slow")
        # Every slot a streamed answer may hold, held by a later page of the stalled
        # session for a peer that has its answer's head; then those peers reset.
        peers = [
            await asyncio.to_thread(ask_and_read_head, server.port, "/api/v1/sessions/slow")
            for _ in range(STREAM_SLOTS)
        ]
        await eventually(lambda: storage.held == STREAM_SLOTS)
        for peer in peers:
            peer.close()
        await eventually(lambda: storage.held == 0, timeout=10.0)
        # A live peer's whole history is streamed at once, the store still stalled.
        status, history = await get(server, "/api/v1/sessions/chat")
        assert status == 200
        assert [m["content"][:2] for m in history["messages"]] == [f"m{i}" for i in range(MESSAGES)]
    finally:
        storage.gate.set()
        await server.stop()
