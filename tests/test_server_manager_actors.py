"""The SessionManager's actors under in-process callers: appends wait while a
session's queue is full, and outlive the actor they waited on; an append under way when
the server stops is answered; a spawn the close ends tells its waiter ServerStopping; a
caller cancelled as its welcome comes leaves no connection behind; a session retiring
mid-batch gets no second actor; an idle parked session is evicted before a busy one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.persistence.base import Appended, StorageError
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.failures import ServerStopping
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.outbox import Outbox, OutboxItem
from tests.gated_appends import GatedAppends
from tests.instances import eventually
from tests.manager_fixtures import manager_fixture  # noqa: F401 (a fixture)


async def test_an_in_process_append_under_way_when_the_server_stops_is_answered(
    tmp_path: Path,
) -> None:
    """The manager's close cancels an actor past its grace (0 here) while its store
    append of a big batch is under way: the caller gets an answer, not a wait for ever."""
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path)))  # fsync
    async with storage:
        manager = SessionManager(SessionManagerConfig(), storage)
        session = await manager.create_session()
        items = [(AgentEvent.token(f"{i:05}" + "x" * 500), None) for i in range(4000)]
        caller = asyncio.create_task(manager.append_events(session.id, items))
        for _ in range(1000):  # until the actor has taken the batch into its store append
            await asyncio.sleep(0)
            actor = manager.live_actor(session.id)
            if actor is not None and actor.task is not None and not len(actor.inbox):
                break
        await manager.close(grace=0.0)
        done, _ = await asyncio.wait({caller}, timeout=5.0)
        assert done, "append_events neither returned nor raised"
        if caller.exception() is not None:
            with pytest.raises(StorageError, match="retry with the same key"):
                caller.result()


@pytest.mark.parametrize("turns", [0, 1])
async def test_a_spawn_the_close_ends_gives_its_waiter_server_stopping(
    manager: SessionManager, turns: int
) -> None:
    """The close ends a spawn under way, before its first step (0 turns) or in its
    load (1): its waiter hears ServerStopping, not a cancellation it never asked for,
    and nothing is left of the spawn."""
    session = await manager.create_session()
    waiter = asyncio.create_task(manager.actors.actor(session.id))
    for _ in range(turns):
        await asyncio.sleep(0)
    closing = asyncio.create_task(manager.close())
    with pytest.raises(ServerStopping):
        await waiter
    await closing
    assert not manager.actors._spawning and manager.live_actor(session.id) is None
    tasks = {task.get_name() for task in asyncio.all_tasks()}
    assert not [name for name in tasks if name.startswith("session-spawn:")]


async def test_in_process_appends_wait_while_the_session_queue_is_full(tmp_path: Path) -> None:
    """As a peer's frames do: callers beyond ``inbox_limit`` wait, not queue."""
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path)))  # fsync
    config = SessionManagerConfig(inbox_limit=4)
    async with storage, SessionManager(config, storage) as manager:
        session = await manager.create_session()
        calls = [manager.append_event(session.id, AgentEvent.token(f"t{i}")) for i in range(50)]
        appending = asyncio.gather(*calls)
        queued = []
        while not appending.done():
            actor = manager.live_actor(session.id)
            queued.append(0 if actor is None else len(actor.inbox))
            await asyncio.sleep(0)
        assert sorted(result.seq for result in await appending) == list(range(1, 51))
        assert 0 < max(queued) <= config.inbox_limit, queued


async def test_in_process_appends_waiting_for_room_outlive_their_actor(tmp_path: Path) -> None:
    """A session with no connection is parked however busy, and may be evicted: the
    callers waiting for room in its queue go to its next actor, and none fails."""
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path)))  # fsync
    config = SessionManagerConfig(inbox_limit=4, max_sessions=1)
    async with storage, SessionManager(config, storage) as manager:
        busy, other = [(await manager.create_session("u1")).id for _ in range(2)]
        calls = [manager.append_event(busy, AgentEvent.token(f"t{i}")) for i in range(50)]
        appending = asyncio.gather(*calls)

        for _ in range(10_000):  # until callers wait for room: each turn, as it passes
            actor = manager.live_actor(busy)
            if actor is not None and not actor.inbox.has_room():
                break
            await asyncio.sleep(0)
        else:
            raise AssertionError("the queue was never full")
        await manager.append_event(other, AgentEvent.token("elsewhere"))  # evicts `busy`
        assert sorted(result.seq for result in await appending) == list(range(1, 51))


async def test_in_process_batches_have_no_byte_bound_when_the_inbox_has_none(
    tmp_path: Path,
) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    async with storage, SessionManager(SessionManagerConfig(inbox_bytes=0), storage) as manager:
        session = await manager.create_session()
        assert (await manager.append_event(session.id, AgentEvent.token("x"))).seq == 1


async def test_a_caller_cancelled_as_its_welcome_comes_leaves_no_connection_behind() -> None:
    """The cancellation lands between the actor's answer and the caller's wake-up (as
    a timeout around connect_session may): the attach is taken back."""
    manager = SessionManager(SessionManagerConfig(), MemoryStorage())
    session_id = (await manager.create_session("u1")).id
    loop = asyncio.get_running_loop()
    caller: asyncio.Task[object] | None = None

    class CancelOnWelcome(Outbox):
        def push(self, item: OutboxItem) -> None:
            super().push(item)
            assert caller is not None
            loop.call_soon(caller.cancel)  # before the caller's wake-up, after the answer

    # Charged to the budget as a WebSocket peer's outbox is: the take-back must empty it.
    outbox = CancelOnWelcome("c1", "client", 64, budget=manager.budget)
    caller = asyncio.create_task(manager.attach(session_id, outbox))
    with pytest.raises(asyncio.CancelledError):
        await caller
    actor = manager.live_actor(session_id)
    assert actor is not None
    await eventually(lambda: not actor.room.outboxes, 5.0)
    assert manager.budget.used == 0
    await manager.close()


@pytest.mark.parametrize("late_caller", ["waiting for room", "new"])
async def test_a_session_retiring_mid_batch_gets_no_second_actor(late_caller: str) -> None:
    """A parked session's actor stops taking commands when its parking runs out, at the
    head of a batch, and retires once the batch is stored. A caller that comes then (or
    wakes then, having waited for room) waits for it: two actors would write at once."""
    storage = GatedAppends()
    config = SessionManagerConfig(inbox_limit=2, disconnect_retention=0.3)
    async with SessionManager(config, storage) as manager:
        session_id = (await manager.create_session("u1")).id
        storage.gate = gate = asyncio.Semaphore(0)

        def append(text: str) -> asyncio.Future[Appended]:
            return asyncio.ensure_future(manager.append_event(session_id, AgentEvent.token(text)))

        calls = [append("a1")]
        await eventually(lambda: storage.in_store == 1)
        old = manager.live_actor(session_id)
        assert old is not None
        await eventually(lambda: len(old.inbox) == 1)  # the parking's Tick, behind a1
        calls.append(append("a2"))
        if late_caller == "waiting for room":
            calls.append(append("a3"))
            await eventually(lambda: not old.inbox.has_room())
        gate.release()  # a1 stored; the next batch: the Tick retires it, a2 in the store
        await eventually(lambda: not old.accepting and storage.in_store == 1)
        if late_caller == "new":
            calls.append(append("a3"))
        await asyncio.sleep(0.1)
        live = manager.live_actor(session_id)
        assert live is None or live is old or old.finished
        for _ in calls:
            gate.release()
        assert sorted(result.seq for result in await asyncio.gather(*calls)) == [1, 2, 3]


async def test_an_idle_parked_session_is_evicted_before_a_busy_one() -> None:
    """A parked actor at work (here an in-process append in the store; an attach under
    way is the same) goes after the idle ones, least recently used or not."""
    storage = GatedAppends()
    async with SessionManager(SessionManagerConfig(max_sessions=2), storage) as manager:
        busy, idle, new = [(await manager.create_session("u1")).id for _ in range(3)]
        storage.gate = gate = asyncio.Semaphore(0)
        appending = asyncio.ensure_future(manager.append_event(busy, AgentEvent.token("t")))
        await eventually(lambda: storage.in_store == 1)
        storage.gate = None
        await manager.append_event(idle, AgentEvent.token("u"))  # busy is the older
        idle_actor = manager.live_actor(idle)
        assert idle_actor is not None
        await eventually(lambda: idle_actor.task is None)  # nothing left to do
        await manager.append_event(new, AgentEvent.token("v"))  # one must go
        assert manager.live_actor(idle) is None and manager.live_actor(busy) is not None
        gate.release()
        assert (await appending).seq == 1
