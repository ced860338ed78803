"""Replay shares across peers (server/replay_shares.py): however many peers hold their
whole share of replay pages, together the whole memory budget, a peer holding no page
gets its page at once, and its replay ends while theirs still wait."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.server.app import BambooServer
from bamboo_session.server.replay_shares import ReplayShare
from bamboo_session.server.room import REPLAY_PAGE_BYTES
from tests.replay_support import kernel_send_buffer_max, publish, stalled_resumer
from tests.support import Peer, attach, run_server, stream_url
from tests.test_replay_shares_ends import (
    EVENT_BYTES,
    MIB,
    SETTINGS,
    a_session_past_the_kernel_buffers,
)
from tests.test_server_lifecycle import eventually

# Their shares (a quarter each, four pages held of 200 KB: the fifth's charge does not
# fit) hold the budget: 4 MB of 4 MiB, with no room for one more page.
HEAVY = [f"127.0.0.{i}" for i in range(2, 7)]
LIGHT = "127.0.0.7"
STALLED = 6  # of each heavy address: four hold a page (a share of 1 MiB), two wait
LIGHT_EVENTS = 40  # of 2 KB: more than the ring holds, so the replay reads the store


@contextlib.asynccontextmanager
async def resumer_from(
    server: BambooServer, address: str, session_id: str
) -> AsyncIterator[tuple[Peer, dict[str, Any]]]:
    """A peer at ``address`` resuming ``session_id`` from its start, once welcomed."""
    async with connect(
        stream_url(server, session_id),
        subprotocols=["bamboo.v1"],  # type: ignore[list-item]
        compression=None,
        open_timeout=5,
        close_timeout=2,
        local_addr=(address, 0),
    ) as ws:
        peer = Peer(ws)
        await peer.send({"type": "hello", "last_seq": 0})
        welcome = await peer.recv(10)
        assert welcome["type"] == "welcome", welcome
        yield peer, welcome


async def events_through(peer: Peer, last: int) -> list[int]:
    """The seqs of the events ``peer`` gets, up to ``last``."""
    seqs = [(await peer.recv_type("event", 30.0))["seq"]]
    while seqs[-1] < last:
        seqs.append((await peer.recv_type("event", 30.0))["seq"])
    return seqs


@contextlib.asynccontextmanager
async def stalled_peers(
    server: BambooServer,
    session_id: str,
    addresses: list[str],
    per_address: int,
    stalled: Callable[[ReplayShare], bool],
) -> AsyncIterator[list[socket.socket]]:
    """``per_address`` resumers of ``session_id`` from each of ``addresses`` that read
    nothing, once every address's share is ``stalled`` and no replay of theirs can move:
    each waits for its share, or holds a page its socket takes no more of (writing
    paused). The pages must be held throughout (no page timeout); closed on exit."""
    shares = [server.services.replay_shares.of("addr:" + address) for address in addresses]
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for address in addresses:
            for _ in range(per_address):
                socks.append(
                    await loop.run_in_executor(
                        None, stalled_resumer, server.port, session_id, 0, address
                    )
                )

        def settled() -> bool:
            # Not a second after the shares first looked stalled: a loaded machine was
            # still moving pages into the sockets' buffers then, and the shares changed.
            if not all(share is not None and stalled(share) for share in shares):
                return False
            theirs = [
                connection
                for connection in server._open_connections
                if connection.transport.get_extra_info("peername")[0] in addresses
            ]
            paused = sum(connection.paused for connection in theirs)
            waiting = sum(len(share._waiting) for share in shares if share is not None)
            return len(theirs) == len(socks) == paused + waiting

        await eventually(settled, 30.0)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def heavy_peers_holding_their_shares(
    server: BambooServer, session_id: str
) -> contextlib.AbstractAsyncContextManager[list[socket.socket]]:
    """STALLED resumers from each HEAVY address, once each address holds more than half
    its share and some of its pages wait."""
    return stalled_peers(
        server,
        session_id,
        HEAVY,
        STALLED,
        lambda share: share.used > share.limit // 2 and bool(share._waiting),
    )


async def test_a_peer_holding_no_page_gets_its_replay_while_peers_filling_the_budget_wait() -> None:
    """Five addresses' stalled resumers each hold their share (a quarter of the budget)
    and queue more pages behind it: together they hold the budget, but no replay page
    waits for the budget itself, only for its own peer's share. So a sixth address's
    resume, reading the store, gets its whole replay while each heavy address's own
    reading resumer still waits behind its stalled pages, and those get theirs once
    the stalled resumers are gone. A process-wide gate on replay pages (a page waiting
    once the budget has no room for it) would keep the sixth address waiting with them."""
    settings = {
        **SETTINGS,
        "replay_page_timeout": 120.0,  # nothing given up on meanwhile
        # The pages of all peers together may fill the budget, so that the shares fill:
        # the total is full too (a page short), and the light peer's first page, taken
        # at once, passes it. Under the default half, tests/test_replay_total.py.
        "replay_total_share": 1.0,
    }
    async with run_server(**settings) as server:
        heavy_session = await a_session_past_the_kernel_buffers(server)
        heavy_last = (kernel_send_buffer_max() + 4 * MIB) // EVENT_BYTES + 1  # its events
        async with attach(server, role="agent") as (agent, welcome):
            light_session = welcome["session"]["id"]
            await publish(agent, LIGHT_EVENTS, size=2_000)
        shares = [server.services.replay_shares.of("addr:" + address) for address in HEAVY]
        budget = server.manager.budget
        finished: list[str] = []
        async with contextlib.AsyncExitStack() as stack:
            stalled = await stack.enter_async_context(
                heavy_peers_holding_their_shares(server, heavy_session)
            )
            # Together they leave the budget no room for another page (once their pages
            # are read: a loaded machine reads them later than the shares are half full).
            await eventually(lambda: budget.used + REPLAY_PAGE_BYTES > budget.limit, 30.0)
            waiting = [len(s._waiting) for s in shares if s is not None]
            heavy_readers = [
                (await stack.enter_async_context(resumer_from(server, a, heavy_session)))[0]
                for a in HEAVY
            ]

            store_reads = server.metrics.replay_store_reads._value.get()
            async with resumer_from(server, LIGHT, light_session) as (light, resumed):
                assert resumed["replay"] == LIGHT_EVENTS
                seqs = await events_through(light, LIGHT_EVENTS)
                assert seqs == list(range(1, LIGHT_EVENTS + 1))
                finished.append("light")
            assert server.metrics.replay_store_reads._value.get() > store_reads
            # Each heavy address's reader still waits behind its stalled pages, in turn.
            await eventually(
                lambda: (
                    [len(s._waiting) for s in shares if s is not None] == [n + 1 for n in waiting]
                ),
                10.0,
            )
            for reader in heavy_readers:
                with pytest.raises(TimeoutError):
                    await reader.recv(0.2)  # no event yet

            for sock in stalled:
                sock.close()  # their pages are given up on: the waiting ones go on
            for address, reader in zip(HEAVY, heavy_readers, strict=True):
                assert await events_through(reader, heavy_last) == list(range(1, heavy_last + 1))
                finished.append(address)
        assert finished == ["light", *HEAVY]
