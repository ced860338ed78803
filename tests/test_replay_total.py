"""The bound on what all peers' replay pages hold together (server/replay_shares.py,
``--replay-total-share``): many addresses' stalled resumers, each within its own
share, no longer take the budget that other peers' live viewers need; what they hold
stays within the total plus a page per peer; and once they are gone, every heavy
address's reader gets its whole replay, in order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bamboo_session.server.app import BambooServer
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.replay_shares import ReplayShares
from bamboo_session.server.room import REPLAY_PAGE_BYTES
from tests.replay_support import kernel_send_buffer_max
from tests.support import attach, run_server, token
from tests.test_replay_shares import until_closing, viewer_from
from tests.test_replay_shares_ends import EVENT_BYTES, MIB, a_session_past_the_kernel_buffers
from tests.test_replay_shares_peers import events_through, resumer_from, stalled_peers

KIB = 1024
HEAVY = [f"127.0.0.{i}" for i in range(2, 8)]  # six addresses, each within its share
VIEWER = "127.0.0.9"
STALLED = 6  # of each heavy address
BURSTS, BURST_EVENTS = 5, 20  # of 10 KB events: past the queue a spent budget leaves

SETTINGS: dict[str, Any] = {
    "memory_budget": 4 * MIB,  # a share of 1 MiB, a total of 2 MiB
    "ring_bytes": 64 * KIB,  # too small for one event: every page is read
    "replay_page_timeout": 120.0,  # stalled pages held throughout, never given up on
    "close_timeout": 1.0,
    "send_queue_bytes": 256 * KIB,  # past the budget, a queue of 32 KB goes (4429)
    "rate_limit_bytes": 0,  # megabytes to set up: not a read-allowance test
    "durability": "os",
}


@contextlib.asynccontextmanager
async def peak_of(read: Callable[[], int]) -> AsyncIterator[list[int]]:
    """The highest ``read()`` seen while inside ([peak]), looked at every 2 ms."""
    peak = [read()]

    async def watch() -> None:
        while True:
            peak[0] = max(peak[0], read())
            await asyncio.sleep(0.002)

    watcher = asyncio.ensure_future(watch())
    try:
        yield peak
    finally:
        watcher.cancel()
        peak[0] = max(peak[0], read())


def stalled_heavy_peers(
    server: BambooServer, session_id: str
) -> contextlib.AbstractAsyncContextManager[list[socket.socket]]:
    """STALLED resumers from each HEAVY address, once every address holds pages and
    has more waiting."""
    return stalled_peers(
        server,
        session_id,
        HEAVY,
        STALLED,
        lambda share: bool(share.used) and bool(share._waiting),
    )


async def bursts_to_a_viewer(server: BambooServer) -> None:
    """A session's bursts, each wholly received by a viewer from VIEWER."""
    async with attach(server, role="agent") as (publisher, welcome):
        async with viewer_from(server, VIEWER, welcome["session"]["id"]) as viewer:
            for burst in range(BURSTS):
                items = [
                    {"event": token(f"{burst}:{i}:" + "v" * 10_000)} for i in range(BURST_EVENTS)
                ]
                await publisher.send({"type": "batch", "id": burst, "items": items})
                assert (await publisher.recv_type("acks", timeout=10))["id"] == burst
                got = [(await viewer.recv_type("event", timeout=10))["seq"] for _ in items]
                first = burst * BURST_EVENTS + 1
                assert got == list(range(first, first + BURST_EVENTS))


async def test_many_peers_stalled_within_their_shares_leave_live_viewers_their_budget() -> None:
    """Six addresses' resumers that read nothing, each address within its quarter of
    the budget: together they held more than all of it, and another address's viewer
    was closed with 4429 (send queue full) at its first burst. Their pages together
    now stay within half the budget (plus a page each, their first), the viewer gets
    every burst, and once they are gone each address's reader gets its whole replay."""
    async with run_server(**SETTINGS) as server:
        heavy_session = await a_session_past_the_kernel_buffers(server)
        heavy_last = (kernel_send_buffer_max() + 4 * MIB) // EVENT_BYTES + 1
        total = server.services.replay_shares.total
        bound = total.limit + len(HEAVY) * REPLAY_PAGE_BYTES  # a first page each past it
        closes = server.metrics.closes.labels(code="4429")
        budget = server.manager.budget
        async with peak_of(lambda: total.used) as held, contextlib.AsyncExitStack() as stack:
            async with stalled_heavy_peers(server, heavy_session):
                readers = [
                    (await stack.enter_async_context(resumer_from(server, a, heavy_session)))[0]
                    for a in HEAVY
                ]
                await bursts_to_a_viewer(server)
                assert closes._value.get() == 0  # nobody closed as too slow
                assert budget.used <= budget.limit, (budget.used, budget.limit)
                assert total.used + REPLAY_PAGE_BYTES > total.limit  # full: they wait
                assert held[0] <= bound, (held[0], bound)
            # The stalled resumers are gone, their pages given up on: the readers go on.
            for reader in readers:
                assert await events_through(reader, heavy_last) == list(range(1, heavy_last + 1))
        assert held[0] <= bound, (held[0], bound)
        assert closes._value.get() == 0


async def test_room_given_back_goes_first_to_peers_holding_less_than_an_equal_part() -> None:
    """Shares of 800 under a total of 500: a page given back, by whichever peer, goes
    to the waiting page of a peer holding less than an equal part of the total before
    the earlier page of a peer holding more; a peer holding nothing gets its page at
    once however full the total; a page cancelled once charged gives its room on."""
    shares = ReplayShares(1_000, 0.8, 0.5)
    a, b, c, d = (shares.of(f"addr:{n}") for n in "abcd")
    assert a is not None and b is not None and c is not None and d is not None
    assert a.take_now(300) and a.take_now(200)  # the total is full
    assert not a.take_now(100)  # within its share, not under the total
    assert b.take_now(100) and c.take_now(100)  # first pages: at once, past the total
    boxes = [Outbox(n, "client", 8) for n in "abc"]
    a_page, b_page, c_page = (
        asyncio.ensure_future(share.room(100, functools.partial(until_closing, box)))
        for share, box in zip((a, b, c), boxes, strict=True)
    )
    await asyncio.sleep(0.01)
    assert not (a_page.done() or b_page.done() or c_page.done())
    assert not b.take_now(1)  # in turn behind the total's waiting pages
    a.give_back(300)  # 400 of 500: room for one, b's (100 of an equal 166) before a's
    assert await b_page and not a_page.done() and not c_page.done()
    b.give_back(100)  # c holds less than an equal part, a more: c's, though a came first
    assert await c_page and not a_page.done()
    assert d.take_now(300)  # d holds nothing: at once, the total full
    d.give_back(300)
    b.give_back(100)  # b holds nothing now: 400 of 500, a's turn (200 of an equal 250)
    assert await a_page
    assert (a.used, b.used, c.used, shares.total.used, shares.total.holders) == (
        300,
        0,
        200,
        500,
        2,
    )
    late = asyncio.ensure_future(b.room(200, functools.partial(until_closing, boxes[1])))
    await asyncio.sleep(0.01)
    assert late.done() and b.used == 200  # a first page again: at once
    waiting = asyncio.ensure_future(c.room(100, functools.partial(until_closing, boxes[2])))
    await asyncio.sleep(0.01)
    a.give_back(300)  # charged to c's waiting page at once...
    waiting.cancel()  # ...whose task is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (c.used, shares.total.used) == (200, 400)


async def test_a_waiting_page_is_not_charged_past_its_share_once_a_page_of_its_peer_grew() -> None:
    """A peer's page that grows once read (one big event, the peer's only page held)
    leaves its peer's next waiting page no room in its share: that page waits for
    the peer's own pages, whatever room the total has. It stayed in the total's turn,
    sized against the share as it was, and the next page given back by another peer
    charged it past the share."""
    shares = ReplayShares(2_000, 0.5, 1.0)  # a share of 1000, a total of 2000
    a, b = shares.of("addr:a"), shares.of("addr:b")
    assert a is not None and b is not None
    assert b.take_now(1_500) and a.take_now(100)  # first pages, the total near full
    box = Outbox("a", "client", 8)
    page = asyncio.ensure_future(a.room(500, functools.partial(until_closing, box)))
    await asyncio.sleep(0.01)
    assert not page.done()  # within a's share, not under the total
    assert a.may_grow(100, 900)  # a's only page held: it may grow
    a.settle(100, 900)  # 900 of a's 1000: no room for its waiting 500
    b.give_back(1_500)  # the total has room, a's share has not
    await asyncio.sleep(0.01)
    assert not page.done() and a.used == 900, a.used
    a.give_back(900)  # a holds nothing: its waiting page at once
    assert await page
    assert (a.used, shares.total.used, shares.total.holders) == (500, 500, 1)
