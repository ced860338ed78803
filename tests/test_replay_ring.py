"""Replay pages read from the store (server/replay.py): one read for every resumer that
needs the same page at once, a failed read fails them all and the next resumer reads
again, and a page that reaches up to the ring goes in front of it (SessionRoom.seed_ring)
only while it still joins the ring, within the ring's bounds, newest kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from bamboo_session.persistence import MemoryStorage, SessionNotFound
from bamboo_session.protocol.codec import JSON
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.models import AgentEvent, Session, SessionMetadata, StoredEvent, Token
from bamboo_session.server.actor import SessionActor
from bamboo_session.server.budget import MemoryBudget
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import Outbox
from bamboo_session.server.pages import PageReads
from bamboo_session.server.replay_charge import PageCharge
from bamboo_session.server.room import RING_BYTES, SessionRoom
from tests.test_server_actor import append, attach, spawn

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def page(first: int, last: int, size: int = 10) -> list[Outbound]:
    return [
        Outbound.for_event(StoredEvent(s, T0, Token("x" * size))) for s in range(first, last + 1)
    ]


def ring_seqs(room: SessionRoom) -> list[int]:
    return [out.seq for out in room.ring or ()]


def watched_room(published: int, ring_size: int = 8, **bounds: Any) -> SessionRoom:
    """A room at ``published`` with an empty ring (as after a restart) and a viewer."""
    room = SessionRoom("ep", published, ring_size, **bounds)
    room.join(Outbox("v", "client", limit=100), None, None, SessionMetadata(id="s"))
    return room


# -- the room: seed_ring -----------------------------------------------------------------


def test_a_page_that_ends_where_the_ring_begins_goes_in_front_of_it() -> None:
    budget = MemoryBudget(0)
    room = watched_room(5, budget=budget)
    assert room.seed_ring(page(1, 5)) == 5
    assert ring_seqs(room) == [1, 2, 3, 4, 5] and budget.used == room.ring_bytes > 0
    assert room.ring_page(0, 5) is not None  # the next resumer replays from memory
    room.deliver([StoredEvent(6, T0, Token("live"))])  # live events follow as before
    assert ring_seqs(room) == [1, 2, 3, 4, 5, 6]
    room.drop_ring()
    assert budget.used == 0


def test_only_what_is_older_than_the_ring_goes_in_and_only_if_it_joins_it() -> None:
    room = watched_room(4)
    room.deliver([StoredEvent(s, T0, Token("live")) for s in (5, 6)])
    assert room.seed_ring(page(1, 3)) == 0  # 4 is missing: a gap would follow
    assert room.seed_ring(page(2, 6)) == 3  # 5 and 6 are there already
    assert ring_seqs(room) == [2, 3, 4, 5, 6]
    assert room.seed_ring(page(7, 9)) == 0  # beyond the log's end as the room knows it


def test_the_ring_keeps_its_bounds_and_the_newest_events() -> None:
    room = watched_room(10, ring_size=4)
    assert room.seed_ring(page(1, 10)) == 4
    assert ring_seqs(room) == [7, 8, 9, 10]
    one = page(1, 1, size=1000)[0].event_size
    by_bytes = watched_room(10, ring_max_bytes=RING_BYTES + 3 * one)
    by_bytes.seed_ring(page(1, 10, size=1000))
    assert ring_seqs(by_bytes) == [8, 9, 10] and by_bytes.ring_bytes <= RING_BYTES + 3 * one
    tight = MemoryBudget(RING_BYTES + 2 * one)
    by_budget = watched_room(10, budget=tight)
    by_budget.seed_ring(page(1, 10, size=1000))
    assert ring_seqs(by_budget) == [9, 10] and tight.used == by_budget.ring_bytes


def test_nothing_goes_in_once_the_ring_moved_on_or_nobody_watches() -> None:
    moved = watched_room(3, ring_size=2)
    moved.deliver([StoredEvent(s, T0, Token("live")) for s in (4, 5, 6)])  # ring: 5, 6
    assert moved.seed_ring(page(1, 3)) == 0 and ring_seqs(moved) == [5, 6]
    closed = watched_room(3)
    closed.close_all(CloseCode.NOT_FOUND, "session deleted")
    assert closed.seed_ring(page(1, 3)) == 0 and closed.ring is None
    parked = SessionRoom("ep", 3, ring_size=8)
    assert parked.seed_ring(page(1, 3)) == 0
    no_ring = watched_room(3, ring_size=0)
    assert no_ring.seed_ring(page(1, 3)) == 0 and no_ring.ring is None


# -- the actor's replay reads --------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[MemoryStorage]:
    storage = await MemoryStorage.open()
    await storage.create_session(Session.new("s"))
    for text in "abcdef":
        await storage.append_event("s", AgentEvent.token(text))
    yield storage
    await storage.close()


def store_reads(actor: SessionActor) -> float:
    return actor.metrics.replay_store_reads._value.get()  # type: ignore[attr-defined]


async def test_resumers_that_need_the_same_page_share_one_read(store: MemoryStorage) -> None:
    actor = await spawn(store)  # a fresh actor, as after a restart: its ring is empty
    await attach(actor, "v", last_seq=2)
    reads = PageReads(1, 10.0)
    async with reads.slots:  # the read waits for a slot while the others arrive
        waiters = [asyncio.create_task(actor.replay_reads.page(2, 6, reads)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
    pages = await asyncio.gather(*waiters)
    assert [[out.seq for out in p] for p in pages] == [[3, 4, 5, 6]] * 5
    assert store_reads(actor) == 1
    assert ring_seqs(actor.room) == [3, 4, 5, 6]  # seeded: the next resumer reads nothing
    assert [out.seq for out in await actor.replay_reads.page(2, 6, reads)] == [3, 4, 5, 6]
    assert [out.seq for out in await actor.replay_reads.page(0, 6, reads)] == [1, 2]
    assert store_reads(actor) == 2 and ring_seqs(actor.room) == [1, 2, 3, 4, 5, 6]


async def test_a_failed_read_fails_every_waiter_and_the_next_resumer_reads_again(
    store: MemoryStorage,
) -> None:
    actor = await spawn(store)
    await attach(actor, "v", last_seq=0)
    reads = PageReads(1, 10.0)
    async with reads.slots:
        waiters = [asyncio.create_task(actor.replay_reads.page(0, 6, reads)) for _ in range(3)]
        await asyncio.sleep(0.05)
        await store.delete_session("s")  # the read will fail: the log is gone
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, SessionNotFound) for r in results), results
    assert store_reads(actor) == 1 and actor.room.ring is None
    # The session back with the log's epoch (as a migration brings it back): a session
    # of another epoch under the id would be not found to this actor's reads.
    again = Session.new("s")
    again.metadata.epoch = actor.room.epoch
    await store.create_session(again)
    await store.append_event("s", AgentEvent.token("again"))
    assert [out.seq for out in await actor.replay_reads.page(0, 1, reads)] == [1]
    assert store_reads(actor) == 2


async def test_a_read_seeds_the_ring_only_if_it_still_joins_it(store: MemoryStorage) -> None:
    actor = await spawn(store, ring_size=3)
    await attach(actor, "v", last_seq=0)
    reads = PageReads(1, 10.0)
    async with reads.slots:
        read = asyncio.create_task(actor.replay_reads.page(0, 6, reads))
        await asyncio.sleep(0.05)
        for text in "ghij":  # live events arrive meanwhile, and push the ring past 7
            await append(actor, text)
        await asyncio.sleep(0.05)
        assert ring_seqs(actor.room) == [8, 9, 10]
    assert [out.seq for out in await read] == [1, 2, 3, 4, 5, 6]
    assert ring_seqs(actor.room) == [8, 9, 10]  # 7 is not in the page: no seed


async def test_a_read_that_ends_after_the_session_stopped_seeds_nothing(
    store: MemoryStorage,
) -> None:
    actor = await spawn(store)
    await attach(actor, "v", last_seq=0)
    reads = PageReads(1, 10.0)
    async with reads.slots:
        read = asyncio.create_task(actor.replay_reads.page(0, 6, reads))
        await asyncio.sleep(0.05)
        actor.room.close_all(CloseCode.NOT_FOUND, "session deleted")
    assert [out.seq for out in await read] == [1, 2, 3, 4, 5, 6]
    assert actor.room.ring is None and actor.room.budget.used == 0


# -- a replay page's charge (server/replay_charge.py) --------------------------------------


def test_ring_events_stalled_pages_hold_are_charged_once_when_the_ring_lets_them_go() -> None:
    budget = MemoryBudget(0)
    room = watched_room(0, ring_size=4, budget=budget)
    room.deliver([StoredEvent(s, T0, Token("x" * 1000)) for s in range(1, 5)])
    ring_page = list(room.ring or ())[:2]  # seqs 1 and 2, as a resumer's page holds them
    for out in ring_page:
        out.framed(JSON)  # the ring counts the frame it keeps
    held = sum(out.held for out in ring_page)
    pages = [PageCharge(0, list(ring_page)) for _ in range(10)]  # ten stalled resumers
    for charge in pages:
        charge.start(budget)
        charge.recheck()
    in_rings = budget.used
    assert in_rings == room.ring_bytes  # the ring counts them: nothing more

    room.deliver([StoredEvent(s, T0, Token("live")) for s in range(5, 7)])  # 1 and 2 go
    assert ring_seqs(room) == [3, 4, 5, 6]
    for charge in pages:
        charge.recheck()
    assert budget.used == room.ring_bytes + held  # once, not ten times

    for charge in pages[:9]:
        charge.release()
    assert budget.used == room.ring_bytes + held  # the last page still keeps them
    pages[9].release()
    pages[9].release()  # a second release gives back nothing more
    assert budget.used == room.ring_bytes
