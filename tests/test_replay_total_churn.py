"""Many resumers of several addresses under a tight replay total
(server/replay_shares.py), some of them dropping mid-replay at random: every reader
that stays gets its whole replay in order, and once all are gone every peer's share,
the total and its count of peers holding pages are back to 0, nothing left waiting.
The same books kept by the shares alone under random takes, waits, settles, gives
back and cancellations, whatever the parts of the budget (a total of 0 included)."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.server.app import BambooServer
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.replay_shares import ReplayShare, ReplayShares
from tests.replay_support import publish
from tests.support import Peer, attach, run_server, stream_url
from tests.test_replay_shares import until_closing
from tests.test_server_lifecycle import eventually

KIB = 1024
ADDRESSES = [f"127.0.0.{i}" for i in range(2, 6)]
PER_ADDRESS = 4  # resumers of each address
EVENTS, EVENT_BYTES = 40, 60_000  # 2.4 MB: pages of four events, past what a share holds
SETTINGS: dict[str, Any] = {
    "memory_budget": 2 * 1024 * KIB,  # a share of 512 KiB (two pages), a total of 1 MiB
    "ring_bytes": 64 * KIB,  # too small for one event: every page is read from the store
    "replay_page_timeout": 30.0,  # nothing given up on: the readers pause, never stall
    "rate_limit_bytes": 0,  # not a read-allowance test
    "durability": "os",
}


async def resume(server: BambooServer, address: str, session_id: str, rng: random.Random) -> bool:
    """A resumer at ``address`` that reads its replay with pauses, on a small receive
    buffer so that its pages wait in the server; it drops its connection (a reset) at
    a random event, or reads to the end: whether it read the whole replay, in order."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * KIB)
    sock.bind((address, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    drop_at = rng.randrange(1, EVENTS) if rng.random() < 0.3 else None
    async with connect(
        stream_url(server, session_id),
        subprotocols=["bamboo.v1"],  # type: ignore[list-item]
        compression=None,
        sock=sock,
        max_queue=2,
        open_timeout=5,
        close_timeout=2,
    ) as ws:
        peer = Peer(ws)
        await peer.send({"type": "hello", "last_seq": 0})
        assert (await peer.recv(10))["type"] == "welcome"
        seqs: list[int] = []
        while len(seqs) < EVENTS:
            if len(seqs) == drop_at:
                ws.transport.abort()  # gone mid-replay, its pages held or waiting
                return False
            seqs.append((await peer.recv_type("event", 30.0))["seq"])
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() / 50)  # a pause: its next page waits
        assert seqs == list(range(1, EVENTS + 1))
        return True


async def test_resumers_dropping_at_random_leave_the_others_whole_replays_and_no_charge() -> None:
    """Sixteen resumers of four addresses, a share of two pages each and a total of
    four: the pages wait in turn, and about a third of the resumers reset mid-replay."""
    rng = random.Random(180)
    async with run_server(**SETTINGS) as server:
        async with attach(server, role="agent") as (agent, welcome):
            await publish(agent, EVENTS, size=EVENT_BYTES)
            session_id = welcome["session"]["id"]
        shares = server.services.replay_shares
        peers = [shares.of("addr:" + address) for address in ADDRESSES]  # kept alive
        total = shares.total
        peak = [0]

        async def watch() -> None:
            while True:
                peak[0] = max(peak[0], total.holders)
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        try:
            async with asyncio.timeout(120):
                outcomes = await asyncio.gather(
                    *(
                        resume(server, address, session_id, random.Random(rng.random()))
                        for address in ADDRESSES
                        for _ in range(PER_ADDRESS)
                    )
                )
        finally:
            watcher.cancel()
        assert any(outcomes) and not all(outcomes), outcomes  # some stayed, some dropped
        assert peak[0] > 1  # the peers held pages at the same time

        def all_given_back() -> bool:
            return total.used == 0 and all(p is not None and p.used == 0 for p in peers)

        await eventually(all_given_back, 10.0)
        assert (total.holders, total.blocked) == (0, {})
        assert not any(p is not None and p._waiting for p in peers)


def assert_books_kept(shares: ReplayShares, peers: list[ReplayShare]) -> None:
    """The total is what the peers hold, its holders those holding any, and its turn
    the peers whose first waiting page fits their own share (or who hold none)."""
    total = shares.total
    assert total.used == sum(p.used for p in peers) and min(p.used for p in peers) >= 0
    assert total.holders == sum(1 for p in peers if p.used)
    for p in peers:
        fits = bool(p._waiting) and not (p.used and p.used + p.next_size() > p.limit)
        assert (p in total.blocked) == fits, (p.peer, p.used, p.limit, list(p._waiting))


async def pages_of_one_connection(share: ReplayShare, rng: random.Random, box: Outbox) -> None:
    """Twenty pages, each taken (at once or in turn), settled at a random size (none,
    smaller, or bigger when the share lets it grow), held a few steps, given back."""
    for _ in range(20):
        wanted = rng.choice([100, 250, 400, 900, 1500])
        if not share.take_now(wanted) and not await share.room(
            wanted, functools.partial(until_closing, box)
        ):
            return  # its connection closing
        sizes = [0, wanted // 2, wanted] + [wanted * 2] * share.may_grow(wanted, wanted * 2)
        kept = rng.choice(sizes)
        share.settle(wanted, kept)
        try:
            for _ in range(rng.randrange(4)):
                await asyncio.sleep(0)
        finally:
            share.give_back(kept)


@pytest.mark.parametrize("seed", range(40))
async def test_shares_keep_their_books_under_random_waits_and_cancellations(seed: int) -> None:
    """A waiter charged just before its task is cancelled, a page settled bigger or to
    nothing, a connection closing while it waits: the books stay right at every step,
    nobody waits for ever, and all comes back to 0."""
    rng = random.Random(seed)
    budget = rng.choice([500, 2_000, 10_000, 100_000])  # 500 * 0.001: limits of 0
    part, total_part = rng.choice([0.001, 0.25, 1.0]), rng.choice([0.001, 0.5, 1.0])
    shares = ReplayShares(budget, part, total_part)
    peers = [shares.of(f"addr:{n}") for n in range(6)]
    assert all(p is not None for p in peers)
    kept_peers = [p for p in peers if p is not None]
    connections = []
    for n in range(30):
        box = Outbox(str(n), "client", 8)
        share = rng.choice(kept_peers)
        task = asyncio.ensure_future(pages_of_one_connection(share, random.Random(seed + n), box))
        connections.append((task, box))
    for _ in range(300):
        await asyncio.sleep(0)
        assert_books_kept(shares, kept_peers)
        task, box = rng.choice(connections)
        if rng.random() < 0.02:
            task.cancel()  # its connection ended: the reader cancels the replay
        elif rng.random() < 0.01:
            box.drop(CloseCode.TOO_SLOW, "closing")  # its outbox closes under a wait
    async with asyncio.timeout(30):  # nobody waits for ever
        await asyncio.gather(*(task for task, _ in connections), return_exceptions=True)
    for task, _ in connections:
        assert task.cancelled() or task.exception() is None
    assert_books_kept(shares, kept_peers)
    assert (shares.total.used, shares.total.holders, shares.total.blocked) == (0, 0, {})
