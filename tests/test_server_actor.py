"""The session actor on its own, over a real in-memory store, with outboxes for
connections: appends and their answers, fan-out through the store's subscription
(appends by anyone, as another process would make them on a shared store), what a
store-side close or delete does, parking, and idleness."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bamboo_session.persistence import Appended, MemoryStorage, SessionClosed
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Ack, Acks, Closed, Error, EventFrame, Welcome
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from bamboo_session.server.actor import SessionActor
from bamboo_session.server.budget import MemoryBudget
from bamboo_session.server.commands import Append, Attach, BatchReply, Detach, SetState
from bamboo_session.server.inbox import Inbox
from bamboo_session.server.manager_config import SessionManagerConfig
from bamboo_session.server.metrics import Metrics
from bamboo_session.server.outbound import Outbound
from bamboo_session.server.outbox import CloseRequest, Outbox, OutboxItem

WAIT = 5.0


@pytest.fixture
async def store() -> AsyncIterator[MemoryStorage]:
    storage = await MemoryStorage.open()
    await storage.create_session(Session.new("s"))
    yield storage
    await storage.close()


async def spawn(store: MemoryStorage, **config: float) -> SessionActor:
    retired: list[SessionActor] = []
    metadata = await store.get_metadata("s")
    assert metadata is not None
    actor = SessionActor(
        metadata,
        store,
        SessionManagerConfig(**config),
        Metrics(),
        retired.append,  # type: ignore[arg-type]
    )
    actor.start()
    return actor


async def attach(
    actor: SessionActor, name: str, last_seq: int | None = None, epoch: str | None = None
) -> tuple[Outbox, Welcome]:
    outbox = Outbox(name, "client", limit=1000)
    welcomed: asyncio.Future[Welcome] = asyncio.get_running_loop().create_future()
    actor.post(Attach(outbox, last_seq, epoch, welcomed))
    return outbox, await asyncio.wait_for(welcomed, WAIT)


async def append(actor: SessionActor, text: str, key: str | None = None) -> Appended:
    done: asyncio.Future[Appended] = asyncio.get_running_loop().create_future()
    actor.post(Append(AgentEvent.token(text), key, future=done))
    return await asyncio.wait_for(done, WAIT)


async def next_items(outbox: Outbox, count: int) -> list[OutboxItem]:
    return [await asyncio.wait_for(outbox.get(), WAIT) for _ in range(count)]


def event_seqs(items: list[OutboxItem]) -> list[int]:
    return [
        item.frame.seq
        for item in items
        if isinstance(item, Outbound) and isinstance(item.frame, EventFrame)
    ]


async def test_spawning_reads_no_events(store: MemoryStorage) -> None:
    await store.append_events("s", [(AgentEvent.token("x"), None)] * 3)
    actor = await spawn(store)
    assert actor.published_seq == 3 and actor.room.ring is None
    assert not actor.following.active and actor.task is None  # parked: nothing runs


async def test_appends_are_answered_and_duplicates_come_from_the_store(
    store: MemoryStorage,
) -> None:
    actor = await spawn(store)
    assert await append(actor, "a", "k1") == Appended(1)
    assert await append(actor, "b") == Appended(2)
    assert await append(actor, "a again", "k1") == Appended(1, duplicate=True)
    assert await store.last_seq("s") == 2


async def test_a_peer_gets_others_events_not_its_own(store: MemoryStorage) -> None:
    actor = await spawn(store)
    publisher, _ = await attach(actor, "p")
    viewer, _ = await attach(actor, "v")
    await next_items(publisher, 2)  # welcome, presence of the viewer
    await next_items(viewer, 1)  # welcome
    publisher.in_flight += 1  # what a connection's reader counts before posting
    actor.post(Append(AgentEvent.token("hi"), None, publisher, request_id=7))
    (ack,) = await next_items(publisher, 1)
    assert isinstance(ack, Outbound) and ack.frame == Ack(1, id=7)
    assert event_seqs(await next_items(viewer, 1)) == [1]
    await asyncio.sleep(0.01)
    assert len(publisher) == 0  # never its own event


async def test_appends_made_by_another_writer_reach_viewers(store: MemoryStorage) -> None:
    actor = await spawn(store)
    viewer, welcome = await attach(actor, "v")
    assert welcome.last_seq == 0
    await next_items(viewer, 0)
    await store.append_events("s", [(AgentEvent.token(f"{i}"), None) for i in range(3)])
    await store.append_event("s", AgentEvent.token("late"))
    items = await next_items(viewer, 5)  # welcome, then 4 events
    assert event_seqs(items) == [1, 2, 3, 4]
    assert actor.published_seq == 4


async def test_a_resume_replays_from_the_store_after_parking(store: MemoryStorage) -> None:
    actor = await spawn(store, disconnect_retention=60)
    await attach(actor, "v")
    actor.post(Detach("v"))
    await asyncio.sleep(0.01)
    assert not actor.following.active and actor.state == SessionState.DISCONNECTED
    for text in "abc":  # appended while nobody watches: the ring cannot follow
        await append(actor, text)
    again, welcome = await attach(actor, "v2", last_seq=0, epoch=welcome_epoch(actor))
    assert (welcome.last_seq, welcome.resumed, welcome.replay) == (3, True, 3)
    page = await actor.replay_reads.page(0, 3)
    assert [out.seq for out in page] == [1, 2, 3]
    await store.append_event("s", AgentEvent.token("d"))
    assert event_seqs(await next_items(again, 3))[-1] == 4  # welcome, replay marker, event


def welcome_epoch(actor: SessionActor) -> str:
    return actor.room.epoch


async def test_a_close_by_another_writer_closes_every_connection(store: MemoryStorage) -> None:
    actor = await spawn(store)
    viewer, _ = await attach(actor, "v")
    await store.append_event("s", AgentEvent.token("last words"))
    await store.update_session_state("s", SessionState.CLOSED)
    items = await next_items(viewer, 4)  # welcome, the event, closed, the close
    assert event_seqs(items) == [1]
    assert isinstance(items[2], Outbound) and items[2].frame == Closed("session closed")
    assert isinstance(items[3], CloseRequest) and items[3].code == CloseCode.NORMAL
    await asyncio.sleep(0.01)
    assert not actor.accepting and actor.state == SessionState.CLOSED
    with pytest.raises(SessionClosed):
        await append(actor, "too late")


async def test_a_delete_by_another_writer_closes_with_4404(store: MemoryStorage) -> None:
    actor = await spawn(store)
    viewer, _ = await attach(actor, "v")
    await store.delete_session("s")
    items = await next_items(viewer, 3)
    assert isinstance(items[-1], CloseRequest) and items[-1].code == CloseCode.NOT_FOUND


async def test_a_state_request_is_answered_and_closed_ends_the_session(
    store: MemoryStorage,
) -> None:
    actor = await spawn(store)
    viewer, _ = await attach(actor, "v")
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    actor.post(SetState(SessionState.CLOSED, future=done))
    assert await asyncio.wait_for(done, WAIT) == 0
    items = await next_items(viewer, 3)
    assert isinstance(items[-1], CloseRequest) and items[-1].code == CloseCode.NORMAL
    meta = await store.get_metadata("s")
    assert meta is not None and meta.state == SessionState.CLOSED


async def test_a_quiet_session_becomes_idle(store: MemoryStorage) -> None:
    actor = await spawn(store, idle_timeout=0.05)
    await attach(actor, "v")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if actor.state == SessionState.IDLE:
            break
    assert actor.state == SessionState.IDLE
    meta = await store.get_metadata("s")
    assert meta is not None and meta.state == SessionState.IDLE
    await append(actor, "wake up")
    assert actor.state == SessionState.ACTIVE


async def test_a_session_that_expires_while_attached_is_closed_4404() -> None:
    storage = await MemoryStorage.open()
    try:
        await storage.create_session(Session.new("s", ttl=1))
        actor = await spawn(storage, idle_timeout=0.3)
        viewer, _ = await attach(actor, "v")
        items = await next_items(viewer, 3)  # welcome, closed, the close (after ~1 s)
        assert isinstance(items[1], Outbound) and items[1].frame == Closed("session expired")
        assert isinstance(items[2], CloseRequest) and items[2].code == CloseCode.NOT_FOUND
    finally:
        await storage.close()


# -- the items of a batch frame ---------------------------------------------------------


def batch_of(outbox: Outbox, texts: list[str], request_id: int) -> list[Append]:
    """The appends a connection makes of a batch frame's items (server/connection.py)."""
    reply = BatchReply(outbox, request_id, len(texts))
    outbox.in_flight += 1  # one reply: one request in flight
    return [Append(AgentEvent.token(t), None, outbox, None, batch=reply) for t in texts]


async def test_a_batch_is_answered_once_with_every_seq(store: MemoryStorage) -> None:
    actor = await spawn(store)
    publisher, _ = await attach(actor, "p")
    viewer, _ = await attach(actor, "v")
    await next_items(publisher, 2)  # welcome, presence of the viewer
    await next_items(viewer, 1)
    assert await actor.room_for(3)
    actor.post_batch(batch_of(publisher, ["a", "b", "c"], 7))
    (acks,) = await next_items(publisher, 1)
    assert isinstance(acks, Outbound) and acks.frame == Acks([1, 2, 3], id=7)
    assert publisher.in_flight == 0
    assert event_seqs(await next_items(viewer, 3)) == [1, 2, 3]
    await asyncio.sleep(0.01)
    assert len(publisher) == 0  # none of its own events


async def test_a_batch_refused_by_the_store_gets_one_error(store: MemoryStorage) -> None:
    actor = await spawn(store)
    outbox = Outbox("p", "client", limit=1000)  # a peer whose attach raced the close
    await store.update_session_state("s", SessionState.CLOSED)  # by another process
    await actor.room_for(3)
    actor.post_batch(batch_of(outbox, ["a", "b", "c"], 8))
    (error,) = await next_items(outbox, 1)
    assert isinstance(error, Outbound) and isinstance(error.frame, Error)
    assert (error.frame.code, error.frame.id) == ("closed", 8)
    await asyncio.sleep(0.01)
    assert len(outbox) == 0 and outbox.in_flight == 0  # one reply, settled once
    assert await store.last_seq("s") == 0


async def test_a_batch_posted_to_a_finished_actor_is_refused_once_and_weighs_nothing(
    store: MemoryStorage,
) -> None:
    actor = await spawn(store)
    viewer, _ = await attach(actor, "v")
    await store.update_session_state("s", SessionState.CLOSED)  # by another process
    await next_items(viewer, 3)  # welcome, closed, the close
    assert actor.task is not None
    await asyncio.wait_for(actor.task, WAIT)
    assert actor.finished  # a connection's room_for returned just before: it posts
    outbox = Outbox("p", "client", limit=1000)
    batch = batch_of(outbox, ["a", "b", "c"], 9)
    for append in batch:
        append.size = 100
    actor.post_batch(batch)
    (error,) = await next_items(outbox, 1)
    assert isinstance(error, Outbound) and isinstance(error.frame, Error)
    assert (error.frame.code, error.frame.id) == ("closed", 9)
    assert len(outbox) == 0 and outbox.in_flight == 0  # one reply, settled once
    assert (len(actor.inbox), actor.inbox.bytes, actor.inbox.budget.used) == (0, 0, 0)


def test_the_inbox_never_splits_a_batch() -> None:
    inbox = Inbox(limit=10)
    outbox = Outbox("p", "client", limit=1000)
    for i in range(3):
        inbox.append(Append(AgentEvent.token(str(i))))
    first, second = batch_of(outbox, ["a", "b", "c"], 1), batch_of(outbox, ["d", "e"], 2)
    for command in [*first, *second]:
        inbox.append(command)
    assert inbox.has_room(2) and not inbox.has_room(3)  # items count, not frames
    taken = inbox.take_batch(4)  # three singles and the first item of a batch...
    assert taken[3:] == first  # ... and the rest of that batch, never the next one
    assert inbox.take_batch(1) == second
    assert len(inbox) == 0 and inbox.has_room(1000)  # an empty inbox takes any batch


def test_an_inbox_that_fits_in_one_batch_is_taken_whole_and_counted_until_handled() -> None:
    """A lone event's case: everything queued is taken in one list, which is not the
    queue itself (what comes next waits for the next batch), and its bytes stay
    counted until it is handled."""
    budget = MemoryBudget(1000)
    inbox = Inbox(limit=10, max_bytes=1000, budget=budget)
    queued = [Append(AgentEvent.token(str(i)), size=10) for i in range(3)]
    for append in queued:
        inbox.append(append)
    taken = inbox.take_batch(512)
    assert taken == queued and len(inbox) == 0
    assert (inbox.bytes, budget.used) == (30, 30)
    later = Append(AgentEvent.token("later"), size=5)
    inbox.append(later)
    assert taken == queued and inbox.take_batch(512) == [later]
    inbox.finished(taken)
    assert (inbox.bytes, budget.used) == (5, 5)
    inbox.finished([later])
    assert (len(inbox), inbox.bytes, budget.used) == (0, 0, 0)


def test_a_batch_weighs_in_the_inbox_and_the_budget_what_its_items_do() -> None:
    budget = MemoryBudget(1000)
    inbox = Inbox(limit=10, max_bytes=111, budget=budget)
    outbox = Outbox("p", "client", limit=1000)
    first, second = batch_of(outbox, ["a", "b", "c"], 1), batch_of(outbox, ["d"], 2)
    for append, size in zip(first, [50, 30, 30], strict=True):
        append.size = size
    second[0].size = 5
    inbox.extend(first)
    assert (len(inbox), inbox.bytes, budget.used) == (3, 110, 110)
    assert inbox.has_room(7) and not inbox.has_room(8)  # each item counts
    inbox.extend(second)
    assert (len(inbox), inbox.bytes, budget.used) == (4, 115, 115)
    assert not inbox.has_room(1)  # over its bytes: the next peer waits
    taken = inbox.take_batch(1)
    assert taken == first  # the whole batch, and its bytes counted until it is handled
    assert (inbox.bytes, budget.used) == (115, 115)
    inbox.finished(taken)
    inbox.finished(inbox.take_batch(1))
    assert (len(inbox), inbox.bytes, budget.used) == (0, 0, 0)


async def test_peers_waiting_for_room_in_the_inbox_go_in_arrival_order() -> None:
    """A batch waiting for room for all its items is not overtaken by single appends
    that came after it (found by review: under load a batch waited 0.5 s while singles
    went through in 10 ms)."""
    inbox = Inbox(limit=4)
    for i in range(4):
        inbox.append(Append(AgentEvent.token(str(i))))
    order: list[str] = []

    async def queue(name: str, count: int) -> None:
        await inbox.wait_for_room(count)
        order.append(name)
        for i in range(count):
            inbox.append(Append(AgentEvent.token(f"{name}{i}")))

    batch = asyncio.create_task(queue("batch", 3))
    await asyncio.sleep(0)
    singles = [asyncio.create_task(queue(f"single{i}", 1)) for i in range(3)]
    await asyncio.sleep(0)
    for _ in range(7):  # the actor handles one command at a time
        inbox.finished(inbox.take_batch(1))
        await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(batch, *singles), 1.0)
    assert order == ["batch", "single0", "single1", "single2"]
    assert len(inbox) <= 4  # never over the limit


async def test_a_peer_that_finds_room_does_not_overtake_one_waiting_for_it() -> None:
    """The quick ways in (a connection's frame, an in-process append, a hello) posted
    whenever there was room, ahead of a peer already waiting for it (found by review:
    with the memory budget spent elsewhere, a waiting hello could wait for ever)."""
    inbox = Inbox(limit=1)
    inbox.append(Append(AgentEvent.token("queued")))
    order: list[str] = []

    async def post(name: str) -> None:  # as Connection._submit and room_for do
        if not inbox.may_post():
            await inbox.wait_for_room()
        order.append(name)
        inbox.append(Append(AgentEvent.token(name)))

    waiting = asyncio.create_task(post("waiting"))
    await asyncio.sleep(0)
    inbox.finished(inbox.take_batch(1))  # room: the one waiting looks a turn later
    late = asyncio.create_task(post("late"))
    for _ in range(4):
        await asyncio.sleep(0)
        inbox.finished(inbox.take_batch(1))
    await asyncio.wait_for(asyncio.gather(waiting, late), 1.0)
    assert order == ["waiting", "late"]
