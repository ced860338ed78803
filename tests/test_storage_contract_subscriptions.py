"""The storage contract's live subscriptions (persistence/base.py), on every backend
of tests/storage_backends.py: stored events then live ones, one at a time, with no gap
and no duplicate under concurrent appends; ``on_ready``; their end when the session
closes or goes, or the store closes; a large backlog read in pages; what is at hand
taken without waiting (``take_buffered``), past the buffer and at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from bamboo_session.persistence import SessionNotFound, Storage, Subscription
from bamboo_session.persistence.feed import BUFFER_EVENTS
from bamboo_session.protocol.models import AgentEvent, Message, Session, SessionState, Token
from tests.storage_backends import Backend
from tests.storage_contract_fixtures import backend_fixture, store_fixture  # noqa: F401 (fixtures)
from tests.storage_contract_support import new_session, tokens

RECV = 5.0
# The create-to-acknowledgement window of the two tests at the end: JSONL's is wide (its
# fsync), every id falls in it, and a few ids make the point; SQLite's is open for a few
# ids in a hundred; memory and Redis never yield inside it. So each store tries fresh
# ids until WINDOW_HITS of them had their subscribers in before the acknowledgement, or
# MAX_IDS were tried.
WINDOW_HITS = 3
MAX_IDS = 100


async def until_the_window_is_hit(attempt: Callable[[str], Awaitable[bool]], prefix: str) -> None:
    """``attempt`` on fresh ids (it says whether the id's subscribers were made inside
    the window) until WINDOW_HITS of them were, or on MAX_IDS ids."""
    hits = 0
    for n in range(MAX_IDS):
        hits += await attempt(f"{prefix}{n}")
        if hits == WINDOW_HITS:
            return


async def test_subscribe_yields_stored_then_live(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens("a", "b", "c"))
    subscription = await store.subscribe("s1", after_seq=1)
    assert subscription.position == 1
    first = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [e.seq for e in first] == [2, 3]
    assert not subscription.ready()
    await store.append_event("s1", AgentEvent.token("d"), "kd")
    assert subscription.ready()
    live = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [(e.seq, e.event, e.key) for e in live] == [(4, Token("d"), "kd")]
    subscription.close()
    assert subscription.ended == "unsubscribed"
    assert await subscription.next_batch() == []


async def test_subscribe_iterates_one_event_at_a_time(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens("a", "b"))
    subscription = await store.subscribe("s1", after_seq=0)
    seen = []
    async for event in subscription:
        seen.append(event.seq)
        if event.seq == 2:
            await store.append_event("s1", AgentEvent.token("c"))
        if event.seq == 3:
            subscription.close()
    assert seen == [1, 2, 3]


async def test_subscriptions_see_concurrent_appends_once_in_order(store: Storage) -> None:
    await new_session(store)
    await store.append_events("s1", tokens(*"abcdef"))
    subscriptions = [await store.subscribe("s1", after_seq=n) for n in (0, 3, 6)]
    total = 6 + 5 * 40

    async def writer(name: str) -> None:
        for i in range(40):
            await store.append_event("s1", AgentEvent.token(f"{name}{i}"), f"{name}{i}")
            if i % 7 == 0:
                await asyncio.sleep(0)

    async def reader(subscription: object) -> list[int]:
        seqs: list[int] = []
        while not seqs or seqs[-1] < total:
            batch = await subscription.next_batch(limit=17)  # type: ignore[attr-defined]
            assert batch, "the subscription ended early"
            seqs.extend(e.seq for e in batch)
        return seqs

    readers = [asyncio.create_task(reader(s)) for s in subscriptions]
    await asyncio.gather(*(writer(n) for n in "vwxyz"))
    results = await asyncio.wait_for(asyncio.gather(*readers), RECV)
    for start, seqs in zip((0, 3, 6), results, strict=True):
        assert seqs == list(range(start + 1, total + 1))


async def test_take_buffered_hands_out_what_is_at_hand_once_in_order(store: Storage) -> None:
    """``take_buffered`` never waits nor reads the store: what was stored before the
    subscription comes from ``next_batch``; mixed with it, every event comes once, in
    order; once the subscription ended, nothing."""
    await new_session(store)
    await store.append_events("s1", tokens("a", "b"))
    subscription = await store.subscribe("s1", after_seq=0)
    assert subscription.take_buffered() == []  # stored before: not at hand
    seen = [e.seq for e in await asyncio.wait_for(subscription.next_batch(), RECV)]
    for name in "cdef":
        await store.append_event("s1", AgentEvent.token(name))
        batch = subscription.take_buffered(limit=1)
        if not batch:  # not at hand yet (a notice still on its way from a shared store)
            batch = await asyncio.wait_for(subscription.next_batch(limit=1), RECV)
        seen += [e.seq for e in batch]
        assert subscription.position == seen[-1]
    assert seen == [1, 2, 3, 4, 5, 6]
    await store.append_event("s1", AgentEvent.token("g"))
    subscription.close()
    assert subscription.take_buffered() == []


async def test_next_batch_of_no_events_takes_none_and_ends_nothing(store: Storage) -> None:
    """``next_batch(0)`` (or less) asks for nothing: it gives nothing and the
    subscription goes on, its events still to come. Its read of the store asked for
    none and got none, which it took for a store that lost them: it ended ``events
    lost``, and every event after it was never given."""
    await new_session(store)
    await store.append_events("s1", tokens("a", "b", "c"))
    subscription = await store.subscribe("s1", after_seq=1)
    for limit in (0, -1):
        assert await asyncio.wait_for(subscription.next_batch(limit), RECV) == []
        assert (subscription.ended, subscription.position) == (None, 1)
        assert subscription.ready()
    batch = await asyncio.wait_for(subscription.next_batch(), RECV)
    assert [event.seq for event in batch] == [2, 3]


async def take_mixed(subscription: Subscription, limit: int) -> list[int]:
    """What is at hand, else what ``next_batch`` brings: the actor's way."""
    batch = subscription.take_buffered(limit)
    if not batch:
        batch = await asyncio.wait_for(subscription.next_batch(limit), RECV)
    return [event.seq for event in batch]


async def test_take_buffered_past_the_buffer_and_at_a_close(store: Storage) -> None:
    """Published past the subscription's buffer (in events) while nobody took: what
    ``take_buffered`` and ``next_batch``, mixed, hand out is every event once, in order.
    Its session closed mid-delivery (events at hand): the events before the close
    still come, then the end; nothing is at hand once it ended."""
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    total = (BUFFER_EVENTS // 100 + 3) * 100  # whole appends of 100
    for start in range(0, total, 100):
        await store.append_events("s1", tokens(*(f"t{n}" for n in range(start, start + 100))))
    seen: list[int] = []
    while len(seen) < total:
        seen += await take_mixed(subscription, 7)
    await store.append_events("s1", tokens(*"abcdefghijklmnopqrst"))  # buffered: at hand
    while len(seen) < total + 10:
        seen += await take_mixed(subscription, 7)
    await store.update_session_state("s1", SessionState.CLOSED)
    while batch := await take_mixed(subscription, 7):
        seen += batch
    assert seen == list(range(1, total + 21))
    assert subscription.ended == "closed"
    assert subscription.take_buffered() == []


async def test_take_buffered_of_a_deleted_session_gives_nothing(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    await store.append_events("s1", tokens("a", "b", "c"))
    assert await take_mixed(subscription, 1) == [1]
    await store.delete_session("s1")
    while await take_mixed(subscription, 1):  # a shared store's notice may come late
        pass
    assert subscription.ended == "deleted"
    assert subscription.take_buffered() == []


async def test_on_ready_is_called_when_events_arrive(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    calls: list[bool] = []
    subscription.on_ready(lambda: calls.append(True))
    await store.append_event("s1", AgentEvent.token("a"))
    assert calls
    assert [e.seq for e in await subscription.next_batch()] == [1]
    subscription.close()


async def test_a_closed_session_ends_its_subscriptions_after_its_events(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    await store.append_events("s1", tokens("a", "b"))
    await store.update_session_state("s1", SessionState.CLOSED)
    assert [e.seq for e in await asyncio.wait_for(subscription.next_batch(), RECV)] == [1, 2]
    assert await asyncio.wait_for(subscription.next_batch(), RECV) == []
    assert subscription.ended == "closed"
    # Subscribing to a closed session replays its log, then ends.
    late = await store.subscribe("s1", after_seq=1)
    assert [e.seq for e in await asyncio.wait_for(late.next_batch(), RECV)] == [2]
    assert await asyncio.wait_for(late.next_batch(), RECV) == []


async def test_a_deleted_session_ends_its_subscriptions(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    waiting = asyncio.create_task(subscription.next_batch())
    await asyncio.sleep(0)
    await store.delete_session("s1")
    assert await asyncio.wait_for(waiting, RECV) == []
    assert subscription.ended == "deleted"


async def test_closing_the_store_ends_subscriptions(backend: Backend, tmp_path: Path) -> None:
    storage = await backend.open(tmp_path)
    await new_session(storage)
    subscription = await storage.subscribe("s1", after_seq=0)
    waiting = asyncio.create_task(subscription.next_batch())
    await asyncio.sleep(0)
    await storage.close()
    assert await asyncio.wait_for(waiting, RECV) == []
    assert subscription.ended is not None


async def test_a_large_backlog_is_read_in_pages(store: Storage) -> None:
    await new_session(store)
    subscription = await store.subscribe("s1", after_seq=0)
    for _ in range(5):  # more than a subscription buffers: the rest comes from the store
        await store.append_events("s1", tokens(*(["x" * 1000] * 1000)))
    seqs: list[int] = []
    while len(seqs) < 5000:
        batch = await asyncio.wait_for(subscription.next_batch(limit=700), RECV)
        assert 0 < len(batch) <= 700
        seqs.extend(e.seq for e in batch)
    assert seqs == list(range(1, 5001))
    subscription.close()


async def test_subscribers_waiting_for_a_new_session_get_its_creation(store: Storage) -> None:
    # Subscribers that try until the id exists (clients that attach as soon as the
    # session is made) may subscribe between the store's commit of the create and its
    # acknowledgement. The create made a session and removed none: they follow the new
    # log rather than end as "deleted". (A replace does end the old session's
    # subscriptions: tests/test_storage_replace.py.) The window is narrow: many ids,
    # several subscribers each (until_the_window_is_hit).
    async def subscribe_once_created(session_id: str) -> Subscription:
        while True:
            try:
                return await store.subscribe(session_id, after_seq=0)
            except SessionNotFound:
                await asyncio.sleep(0)

    async def attempt(session_id: str) -> bool:
        session = Session.new(session_id)
        session.messages.append(Message.user("made with"))
        creating = asyncio.create_task(store.create_session(session))
        waiting = [subscribe_once_created(session_id) for _ in range(4)]
        subscriptions = await asyncio.wait_for(asyncio.gather(*waiting), RECV)
        inside_the_window = not creating.done()
        await asyncio.wait_for(creating, RECV)
        for subscription in subscriptions:
            batch = await asyncio.wait_for(subscription.next_batch(), RECV)
            assert (subscription.ended, [e.seq for e in batch]) == (None, [1]), session_id
            subscription.close()
        return inside_the_window

    await until_the_window_is_hit(attempt, "new")


async def test_subscribers_of_a_replacing_session_follow_it(store: Storage) -> None:
    # A replace (a session created over an expired one) ends the old session's
    # subscriptions as "deleted", at its acknowledgement; one made between its commit
    # and that acknowledgement, which sees the new session, follows the new session.
    # Subscribers wait until the id's epoch is the new one, so they subscribe only
    # after the commit (a store may have the id missing for a moment in between); the
    # window is narrow: many ids, several subscribers each (until_the_window_is_hit).
    async def subscribe_once_replaced(session_id: str, old_epoch: str) -> Subscription:
        while True:
            try:
                if await store.epoch(session_id) != old_epoch:
                    return await store.subscribe(session_id, after_seq=0)
            except SessionNotFound:
                pass
            await asyncio.sleep(0)

    async def attempt(session_id: str) -> bool:
        old = await new_session(store, session_id)
        await store.append_events(session_id, tokens("old1", "old2"))
        await store.update_session_state(session_id, SessionState.EXPIRED)
        new = Session.new(session_id)
        new.messages.append(Message.user("made with"))
        replacing = asyncio.create_task(store.create_session(new, replace_expired=True))
        waiting = [subscribe_once_replaced(session_id, old.metadata.epoch) for _ in range(4)]
        subscriptions = await asyncio.wait_for(asyncio.gather(*waiting), RECV)
        inside_the_window = not replacing.done()
        await asyncio.wait_for(replacing, RECV)
        for subscription in subscriptions:
            batch = await asyncio.wait_for(subscription.next_batch(), RECV)
            assert (subscription.ended, [e.seq for e in batch]) == (None, [1]), session_id
            subscription.close()
        return inside_the_window

    await until_the_window_is_hit(attempt, "re")
