"""Each peer's share of the memory budget for its replays' pages (server/replay_shares.py):
one peer's many slow resumers cannot hold the budget that other peers' viewers need."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.server.budget import NO_LIMIT
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.replay_shares import ReplayShare, ReplayShares, ReplayTotal
from tests.replay_support import kernel_send_buffer_max, metric, publish, stalled_resumer
from tests.support import Peer, attach, run_server, stream_url, token
from tests.test_server_lifecycle import eventually

KIB = 1024
MIB = 1024 * KIB


async def until_closing(outbox: Outbox) -> None:
    while outbox.closing is None:
        await outbox.closing_within(60.0)


async def test_a_peer_over_its_share_waits_in_turn_and_a_close_ends_its_wait() -> None:
    shares = ReplayShares(1_000, 0.5, 1.0)
    assert ReplayShares(0, 0.5, 0.5).of("addr:x") is None and shares.of(None) is None
    mine = shares.of("addr:127.0.0.1")
    assert isinstance(mine, ReplayShare) and shares.of("addr:127.0.0.1") is mine
    assert mine.take_now(600)  # a peer holding nothing always gets a page, any size
    assert not mine.take_now(100)  # 700 of 500
    first_box, second_box = Outbox("a", "client", 8), Outbox("b", "client", 8)
    first = asyncio.ensure_future(mine.room(300, functools.partial(until_closing, first_box)))
    second = asyncio.ensure_future(mine.room(100, functools.partial(until_closing, second_box)))
    await asyncio.sleep(0.01)
    assert not first.done() and not second.done()
    assert not mine.take_now(1)  # in turn: nobody passes those waiting
    mine.settle(600, 250)  # the page came smaller: 250 + 300 is past 500, still waits
    await asyncio.sleep(0.01)
    assert not first.done()
    mine.give_back(250)  # nothing held: the first fits, and the second with it
    assert await first and await second and mine.used == 400
    third = asyncio.ensure_future(mine.room(200, functools.partial(until_closing, first_box)))
    await asyncio.sleep(0.01)
    first_box.close(CloseCode.NORMAL, "closed")
    assert not await third and mine.used == 400  # ended: nothing charged


@contextlib.asynccontextmanager
async def viewer_from(server: Any, address: str, session_id: str) -> AsyncIterator[Peer]:
    """A viewer of ``session_id`` connecting from ``address`` (another peer)."""
    async with connect(
        stream_url(server, session_id),
        subprotocols=["bamboo.v1"],  # type: ignore[list-item]
        compression=None,
        open_timeout=5,
        close_timeout=2,
        local_addr=(address, 0),
    ) as ws:
        peer = Peer(ws)
        await peer.send({"type": "hello"})
        assert (await peer.recv(5))["type"] == "welcome"
        yield peer


async def test_one_peers_stalled_resumers_leave_other_peers_viewers_their_budget() -> None:
    """30 resumers of one address that read nothing each hold a page of 200 KB (one
    event, read from the store): 6 MB of a 4 MiB budget. Found by review: past the
    budget, another address's viewer whose send queue backed up a little was closed
    with 4429 (send queue full) while they held it. Within their share (a quarter:
    1 MiB, five pages), the others wait, holding nothing, and the budget keeps room."""
    size = 200_000
    count = (kernel_send_buffer_max() + 4 * MIB) // size + 1  # a replay that backs up
    settings: dict[str, Any] = {
        "memory_budget": 4 * MIB,
        "ring_bytes": 64 * KIB,  # too small for one event: every page is read
        # The 30 are served five at a time, each round a page timeout long: 1.5 s
        # keeps them stalled through the sleep below and the viewer's first bursts
        # (without shares it is closed 4429 within them), in 14 s where 3 s took 30.
        "replay_page_timeout": 1.5,
        "close_timeout": 1.0,  # the 4429 closes of peers that never read the close
        "send_queue_bytes": 256 * KIB,  # past the budget, a queue of 32 KB goes
        "rate_limit_bytes": 0,  # megabytes to set up: not a read-allowance test
        "durability": "os",
    }
    loop = asyncio.get_running_loop()
    async with run_server(**settings) as server:
        async with attach(server, role="agent") as (agent, welcome):
            slow_session = welcome["session"]["id"]
            await publish(agent, count, size=size)
        stalled: list[socket.socket] = []
        try:
            for _ in range(30):
                stalled.append(
                    await loop.run_in_executor(None, stalled_resumer, server.port, slow_session, 0)
                )
            budget = server.manager.budget
            await asyncio.sleep(1.0)  # their first pages stall (6 MB without shares)

            async with attach(server, role="agent") as (publisher, welcome):
                honest_session = welcome["session"]["id"]
                async with viewer_from(server, "127.0.0.2", honest_session) as viewer:
                    for burst in range(5):
                        items = [
                            {"event": token(f"{burst}:{i}:" + "v" * 10_000)} for i in range(20)
                        ]
                        await publisher.send({"type": "batch", "id": burst, "items": items})
                        assert (await publisher.recv_type("acks", timeout=10))["id"] == burst
                        got = [await viewer.recv_type("event", timeout=10) for _ in items]
                        assert [e["seq"] for e in got] == list(
                            range(burst * 20 + 1, burst * 20 + 21)
                        )
                    assert budget.used <= budget.limit, (budget.used, budget.limit)

            # The stalled resumers are served in turn: those holding a page are closed
            # with 4429 as any stalled page is, and those that waited get theirs.
            closes = server.metrics.closes.labels(code="4429")
            await eventually(lambda: closes._value.get() >= 30, 60.0)
            text = server.metrics.render().decode()
            assert metric(text, "bamboo_replay_share_wait_seconds_total") > 0
        finally:
            for sock in stalled:
                sock.close()


async def test_a_wait_cancelled_just_as_it_was_charged_gives_the_charge_back() -> None:
    """Found by review: the room freed by a page sent is charged to the first waiter at
    once; a waiter whose task is cancelled before it resumes (its connection ended, the
    reader cancels the writer) kept that charge for as long as its peer had another
    connection: the peer's share shrank by a page each time, down to one page at a time."""
    mine = ReplayShare("addr:127.0.0.1", 500, ReplayTotal(NO_LIMIT))
    assert mine.take_now(400)
    box = Outbox("a", "client", 8)
    waiting = asyncio.ensure_future(mine.room(300, functools.partial(until_closing, box)))
    await asyncio.sleep(0.01)
    mine.give_back(400)  # the waiter is charged now, and resumes at the next turn...
    waiting.cancel()  # ...but its task is cancelled first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert mine.used == 0
