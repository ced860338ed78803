"""HTTP requests whose peers reset once they have asked: the server makes no answer for
them, and gives up the one it was making when the reset comes.

1,000 such requests a second (pages, listings, ``/metrics``) from a client on the same
two cores held ``/healthz`` 5 to 6 s (h419): the server read and answered every one for
nobody, though the reset had come with the request, while the probe's connection waited
in the listen queue behind them. An orchestrator whose liveness probe times out
restarts a healthy server. On a slow store, the page reads of peers gone held the read
slots (``--read-slots``) until the store answered, and every live peer's page waited
behind them. Counted here without a clock, on a real server (ephemeral port, real
sockets): the store reads it makes or keeps for such requests."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from bamboo_session.persistence import HistoryPage, SessionFilter, SessionListResult
from bamboo_session.server.app import BambooServer
from bamboo_session.server.config import ServerConfig
from tests.gated_reads import GatedReads
from tests.instances import eventually
from tests.support import attach, get

RESETS = 60  # of each kind of request
# A reset that reaches the server only once the request's answer is made is too late to
# save anything: allowed for a few, on a loaded machine.
LATE_RESETS_ALLOWED = RESETS // 4
TARGETS = ("/api/v1/sessions/chat?limit=10", "/api/v1/sessions?limit=10")
SLOW = "/api/v1/sessions/slow?limit=10"  # its page reads wait for the store's gate
READ_SLOTS = 4
STORE_READ_TIMEOUT = 120.0  # so that the reads held are not abandoned for their time


class CountedReads(GatedReads):
    """The memory store, counting the reads of history pages and of session listings;
    the page reads of session ``slow`` wait, as on a stalled disk, until ``gate`` is
    set (``held`` of them meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.pages = 0
        self.listings = 0

    async def get_history_page(
        self,
        session_id: str,
        limit: int,
        before: int | None = None,
        *,
        epoch: str | None = None,
        max_bytes: int | None = None,
    ) -> HistoryPage:
        self.pages += 1
        if session_id == "slow":
            await self.wait_for_gate()
        return await super().get_history_page(
            session_id, limit, before, epoch=epoch, max_bytes=max_bytes
        )

    async def list_sessions(self, filter: SessionFilter) -> SessionListResult:
        self.listings += 1
        return await super().list_sessions(filter)


def ask(port: int, target: str) -> socket.socket:
    """A peer that has sent a GET of ``target``, set to reset when closed (SO_LINGER 0)."""
    peer = socket.create_connection(("127.0.0.1", port))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return peer


async def settled(server: BambooServer, count: Callable[[], int]) -> None:
    """Once every connection the peers opened has ended (the server counts each from
    accept to end), and ``count`` has not moved over a last turn of the loop."""
    for _ in range(500):
        before = count()
        await asyncio.sleep(0.02)
        if len(server._open_connections) == 0 and count() == before:
            return
    raise AssertionError(f"{len(server._open_connections)} connections still open")


async def started(tmp_path: Path, storage: CountedReads) -> BambooServer:
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path),
        rate_limit=0,
        read_slots=READ_SLOTS,
        store_read_timeout=STORE_READ_TIMEOUT,
    )
    server = BambooServer(config, storage)
    await server.start()
    return server


async def with_messages(server: BambooServer, session_id: str) -> None:
    async with attach(server, session_id, create=True) as (peer, _):
        for i in range(3):
            message = {"role": "user", "content": f"m{i}"}
            await peer.request({"type": "message", "id": i, "message": message}, "ack")


async def test_requests_of_peers_gone_read_nothing(tmp_path: Path) -> None:
    storage = CountedReads()
    server = await started(tmp_path, storage)
    try:
        await with_messages(server, "chat")
        reads = lambda: storage.pages + storage.listings  # noqa: E731
        await settled(server, reads)
        before = reads()
        # Sent from the server's own thread, so that it is behind them all, as a
        # server is behind a storm: each request is there with its reset when read.
        for _ in range(RESETS):
            for target in TARGETS:
                ask(server.port, target).close()
        await settled(server, reads)
        read_for_nobody = reads() - before
        assert read_for_nobody <= LATE_RESETS_ALLOWED, (
            f"{read_for_nobody} reads for {2 * RESETS} peers gone"
        )
        # A peer that stays is answered as ever.
        status, page = await get(server, TARGETS[0])
        assert status == 200 and [m["content"] for m in page["messages"]] == ["m0", "m1", "m2"]
        status, listing = await get(server, TARGETS[1])
        assert status == 200 and [s["id"] for s in listing["sessions"]] == ["chat"]
        assert reads() - before == read_for_nobody + 2
    finally:
        await server.stop()


async def test_reads_held_for_peers_gone_free_their_slots(tmp_path: Path) -> None:
    storage = CountedReads()
    server = await started(tmp_path, storage)
    try:
        await with_messages(server, "chat")
        await with_messages(server, "slow")
        # Every read slot held by a page of the stalled session, and as many more
        # pages waiting for one; then all their peers reset.
        peers = [await asyncio.to_thread(ask, server.port, SLOW) for _ in range(2 * READ_SLOTS)]
        await eventually(lambda: storage.held == READ_SLOTS)
        for peer in peers:
            peer.close()
        await eventually(lambda: storage.held == 0, timeout=10.0)
        # A live peer's page has a slot at once, the store still stalled.
        status, page = await get(server, TARGETS[0])
        assert status == 200 and [m["content"] for m in page["messages"]] == ["m0", "m1", "m2"]
    finally:
        storage.gate.set()
        await server.stop()
