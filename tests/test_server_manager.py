"""The SessionManager as an in-process Python API, with no socket, on real files."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import subprocess
import sys
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig, SessionFilter
from bamboo_session.persistence.base import Appended, SessionClosed, SessionNotFound, StorageError
from bamboo_session.persistence.memory import MemoryStorage
from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.models import SessionState, Token
from bamboo_session.server.failures import ServerStopping
from bamboo_session.server.manager import (
    Receiver,
    ServerBusy,
    SessionManager,
    SessionManagerConfig,
)
from bamboo_session.server.outbox import Outbox, OutboxItem
from tests.instances import eventually
from tests.support import attach, open_peer, run_server
from tests.test_replay_server import SlotsTaken

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[SessionManager]:
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    manager = await SessionManager.new(SessionManagerConfig(max_sessions=3), storage)
    yield manager
    await manager.close()
    await storage.close()


async def test_create_connect_append_receive(manager: SessionManager) -> None:
    session = await manager.create_session("user-123", "Chat Title")
    assert session.metadata.user_id == "user-123" and session.metadata.title == "Chat Title"
    receiver = await manager.connect_session(session.id, "conn-001")
    first = await manager.add_message(session.id, Message.user("Hello!"))
    second = await manager.append_event(session.id, AgentEvent.token("Hi!"))
    assert (first.seq, second.seq) == (1, 2) and not first.duplicate
    got = [await receiver.recv(), await receiver.recv()]
    assert [e.seq for e in got] == [1, 2] and got[1] is not None
    assert got[1].event == AgentEvent.token("Hi!")
    history = await manager.get_session_history(session.id)
    assert [m.content for m in history] == ["Hello!"]
    loaded = await manager.get_session(session.id)
    assert loaded is not None and loaded.metadata.connections == 1
    assert loaded.metadata.message_count == 1 and loaded.metadata.last_seq == 2


async def test_reconnect_replays_what_was_missed(manager: SessionManager) -> None:
    session = await manager.create_session()
    receiver = await manager.connect_session(session.id, "a")
    await manager.append_event(session.id, AgentEvent.token("1"))
    assert (await receiver.recv()) is not None
    await manager.disconnect_session(session.id, "a")
    assert (await receiver.recv()) is None  # the receiver ends on disconnect
    for i in range(2, 5):
        await manager.append_event(session.id, AgentEvent.token(str(i)))
    again = await manager.reconnect_session(session.id, "b", last_seq=1)
    await manager.append_event(session.id, AgentEvent.token("5"))
    seqs = []
    async for event in again:
        seqs.append(event.seq)
        if event.seq == 5:
            break
    assert seqs == [2, 3, 4, 5]


async def test_an_event_that_refers_to_what_its_publisher_received_is_collected(
    manager: SessionManager,
) -> None:
    """An in-process agent may publish an event whose data refers to a list that later
    holds the events it receives, its own among them: a reference cycle, which the
    cycle collector must be able to see (a StoredEvent or frame kept out of its sight
    would leak the lot for good)."""

    class Marker:
        """Something in the transcript that can be watched for its end."""

    session = await manager.create_session()
    receiver = await manager.connect_session(session.id, "agent")
    transcript: list[object] = []
    await manager.append_event(session.id, AgentEvent.custom("snapshot", {"so_far": transcript}))
    marker = Marker()
    transcript += [await receiver.recv(), marker]  # the agent keeps what it received
    watch = weakref.ref(marker)
    await manager.delete_session(session.id)
    del transcript, receiver, marker
    gc.collect()
    assert watch() is None


async def test_an_event_no_reader_could_read_back_is_refused_before_it_is_stored(
    manager: SessionManager,
) -> None:
    session = await manager.create_session()
    receiver = await manager.connect_session(session.id, "viewer")
    looped: dict[str, object] = {}
    looped["self"] = looped
    events = [AgentEvent.custom("x", object()), Token(content=5)]  # type: ignore[arg-type]
    events += [AgentEvent.custom("x", {"n": float("nan")}), AgentEvent.custom("x", looped)]
    for bad in events:
        with pytest.raises(ValueError, match="cannot be stored"):
            await manager.append_event(session.id, bad)
    for key in (5, "k" * 129):  # the wire's rules for keys: a string, 128 at most
        with pytest.raises(ValueError, match="key cannot be stored"):
            await manager.append_event(session.id, AgentEvent.token("t"), key)  # type: ignore[arg-type]
    ok = await manager.append_event(session.id, AgentEvent.token("fine"))
    assert ok.seq == 1  # nothing was stored for the refused ones, the session goes on
    got = await asyncio.wait_for(receiver.recv(), 5)
    assert got is not None and got.seq == 1 and got.event == AgentEvent.token("fine")


async def test_a_receiver_resuming_far_back_holds_one_page_at_a_time(tmp_path: Path) -> None:
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    config = SessionManagerConfig(ring_size=16)  # the replay is read from the store
    async with storage, await SessionManager.new(config, storage) as manager:
        session = await manager.create_session()
        for i in range(3000):  # about 6 MB of JSON, 13 MB once decoded
            await manager.append_event(session.id, AgentEvent.token(f"{i:04}" + "x" * 2000))
        tracemalloc.start()
        try:
            receiver = await manager.connect_session(session.id, last_seq=0)
            first = await receiver.recv()
            held = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert first is not None and first.seq == 1
        assert held < 3_000_000, f"{held} bytes held after the first event"
        seqs = [first.seq] + [(await receiver.recv()).seq for _ in range(2999)]  # type: ignore[union-attr]
        assert seqs == list(range(1, 3001))


@contextlib.asynccontextmanager
async def replaying(
    tmp_path: Path, read_timeout: float = 5.0
) -> AsyncIterator[tuple[SessionManager, str, Receiver]]:
    """A session of 1,200 events (replay pages of 512, 512 and 176, read from the
    store), and a receiver that has taken the first page of its replay from 0."""
    storage = await JsonlStorage.open(JsonlStorageConfig(str(tmp_path), durability="os"))
    config = SessionManagerConfig(ring_size=0, store_read_timeout=read_timeout)
    async with storage, await SessionManager.new(config, storage) as manager:
        session = await manager.create_session()
        tokens = [(AgentEvent.token(f"t{i}"), None) for i in range(1200)]
        await manager.append_events(session.id, tokens)
        receiver = await manager.connect_session(session.id, last_seq=0)
        for seq in range(1, 513):
            event = await asyncio.wait_for(receiver.recv(), 5)
            assert event is not None and event.seq == seq
        yield manager, session.id, receiver


async def test_a_receiver_whose_caller_stops_waiting_mid_replay_loses_nothing(
    tmp_path: Path,
) -> None:
    async with replaying(tmp_path) as (manager, session_id, receiver):
        async with SlotsTaken(manager.page_reads):  # the next page waits for a slot...
            with pytest.raises(TimeoutError):  # ...and the caller stops waiting for it
                await asyncio.wait_for(receiver.recv(), 0.3)
        await manager.append_event(session_id, AgentEvent.token("live"))  # seq 1201
        seqs = [(await asyncio.wait_for(receiver.recv(), 5)).seq for _ in range(689)]  # type: ignore[union-attr]
        assert seqs == list(range(513, 1202))


async def test_a_replay_that_fails_lets_no_live_event_past_its_gap(tmp_path: Path) -> None:
    """The session is closed while its receiver is mid-replay, with a live event queued
    before the close, and the next page is not read in time: the receiver ends (1011)
    without that event, which would follow a gap."""
    async with replaying(tmp_path, read_timeout=0.5) as (manager, session_id, receiver):
        await manager.append_event(session_id, AgentEvent.token("live"))  # 1201, queued
        await manager.close_session(session_id)  # its close queued behind it
        async with SlotsTaken(manager.page_reads):
            assert await asyncio.wait_for(receiver.recv(), 5) is None
        assert receiver.close_code == 1011


async def test_a_replay_whose_session_is_deleted_lets_no_live_event_past_its_gap(
    tmp_path: Path,
) -> None:
    async with replaying(tmp_path) as (manager, session_id, receiver):
        await manager.append_event(session_id, AgentEvent.token("live"))  # 1201, queued
        await manager.delete_session(session_id)  # the next page's read: not found
        assert await asyncio.wait_for(receiver.recv(), 5) is None
        assert receiver.close_code == 4404


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


async def test_idempotent_append_and_closed_session(manager: SessionManager) -> None:
    session = await manager.create_session()
    first = await manager.append_event(session.id, AgentEvent.token("x"), key="k")
    again = await manager.append_event(session.id, AgentEvent.token("x"), key="k")
    assert again.seq == first.seq and again.duplicate
    receiver = await manager.connect_session(session.id)
    await manager.close_session(session.id)
    assert (await receiver.recv()) is None
    with pytest.raises(SessionClosed):
        await manager.append_event(session.id, AgentEvent.token("late"))


async def test_an_empty_key_is_a_key(manager: SessionManager) -> None:
    session = await manager.create_session()
    first = await manager.append_event(session.id, AgentEvent.token("x"), key="")
    again = await manager.add_message(session.id, Message.user("m"), key="")
    items = [(AgentEvent.token("y"), ""), (AgentEvent.token("z"), None)]
    results = await manager.append_events(session.id, items)
    assert (first.seq, first.duplicate, again.seq, again.duplicate) == (1, False, 1, True)
    assert [(r.seq, r.duplicate) for r in results] == [(1, True), (2, False)]


async def test_append_events_stores_a_batch_together_in_order(manager: SessionManager) -> None:
    session = await manager.create_session()
    receiver = await manager.connect_session(session.id, "viewer")
    await manager.append_event(session.id, AgentEvent.token("first"), key="k0")
    items = [
        (AgentEvent.token("a"), "k1"),
        (AgentEvent.token("again"), "k0"),  # a key seen before: its first seq
        (AgentEvent.message(Message.user("m")), None),
        (AgentEvent.token("a again"), "k1"),  # a key seen earlier in this batch
    ]
    results = await manager.append_events(session.id, items)
    assert [(r.seq, r.duplicate) for r in results] == [(2, False), (1, True), (3, False), (2, True)]
    assert await manager.append_events(session.id, []) == []
    got = [await asyncio.wait_for(receiver.recv(), 5) for _ in range(3)]
    assert [g.seq for g in got if g is not None] == [1, 2, 3]
    assert [m.content for m in await manager.get_session_history(session.id)] == ["m"]


async def test_append_events_refuses_the_whole_batch_for_one_bad_item(
    manager: SessionManager,
) -> None:
    session = await manager.create_session()
    bad_event = [(AgentEvent.token("ok"), None), (AgentEvent.custom("x", float("nan")), None)]
    bad_key = [(AgentEvent.token("ok"), None), (AgentEvent.token("t"), "k" * 129)]
    for items in (bad_event, bad_key):
        with pytest.raises(ValueError, match="cannot be stored"):
            await manager.append_events(session.id, items)
    too_many = [(AgentEvent.token(str(i)), None) for i in range(manager.config.inbox_limit + 1)]
    megabyte = AgentEvent.token("x" * (1 << 20))
    too_big = [(megabyte, None)] * (manager.config.inbox_bytes // (1 << 20))  # JSON is more
    for items in (too_many, too_big):
        with pytest.raises(ValueError, match="a batch holds at most"):
            await manager.append_events(session.id, items)
    assert await manager.read_events(session.id) == []  # nothing of any was stored
    with pytest.raises(SessionNotFound):  # even with nothing to append
        await manager.append_events("s_missing", [])
    await manager.close_session(session.id)
    for items in ([(AgentEvent.token("late"), None)], []):
        with pytest.raises(SessionClosed):
            await manager.append_events(session.id, items)


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


async def test_get_or_create_list_and_delete(manager: SessionManager) -> None:
    created = await manager.get_or_create_session("s-1", "u1")
    same = await manager.get_or_create_session("s-1", "u2")
    assert created.id == same.id == "s-1" and same.metadata.user_id == "u1"
    await manager.create_session("u2")
    listing = await manager.list_sessions(SessionFilter(user_id="u1"))
    assert [m.id for m in listing.sessions] == ["s-1"] and listing.total == 1
    await manager.delete_session("s-1")
    assert await manager.get_session("s-1") is None
    with pytest.raises(SessionNotFound):
        await manager.append_event("s-1", AgentEvent.token("x"))


async def test_concurrent_get_or_create_of_one_id_all_succeed(manager: SessionManager) -> None:
    sessions = await asyncio.gather(
        *(manager.get_or_create_session("shared", f"u{i}") for i in range(20))
    )
    assert {s.id for s in sessions} == {"shared"}
    assert len({s.metadata.user_id for s in sessions}) == 1


async def test_busy_when_every_live_session_is_connected(manager: SessionManager) -> None:
    receivers, sessions = [], []
    for _ in range(3):
        session = await manager.create_session()
        sessions.append(session)
        receivers.append(await manager.connect_session(session.id))
    extra = await manager.create_session()
    with pytest.raises(ServerBusy):
        await manager.connect_session(extra.id)
    first = manager.live_actor(sessions[0].id)
    assert first is not None and receivers[0].connection_id in first.room.outboxes
    await manager.disconnect_session(sessions[0].id, receivers[0].connection_id)
    await asyncio.sleep(0.05)
    assert await manager.connect_session(extra.id) is not None


def test_session_manager_example_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "session_manager.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("seq=1 MessageEvent(") and "Hello!" in lines[0]
    assert lines[1] == "seq=2 Token(content='Hi!')"


async def test_the_key_window_is_exactly_the_last_10000_appends(manager: SessionManager) -> None:
    session = await manager.create_session()
    first = await manager.append_event(session.id, AgentEvent.token("k"), key="k")
    # 9,999 more appends, posted at once so that they land in large batches
    await asyncio.gather(
        *(manager.append_event(session.id, AgentEvent.token(str(i))) for i in range(9_999))
    )
    inside = await manager.append_event(session.id, AgentEvent.token("k"), key="k")
    assert inside.duplicate and inside.seq == first.seq  # seq 10,001: 10,000 appends later
    filler = await asyncio.gather(
        manager.append_event(session.id, AgentEvent.token("x")),
        manager.append_event(session.id, AgentEvent.token("k"), key="k"),
    )
    assert not filler[1].duplicate and filler[1].seq == 10_002  # 10,001 appends later


def test_config_builder_reads_like_the_seed() -> None:
    config = (
        SessionManagerConfig()
        .with_idle_timeout(300)  # 5 minutes idle timeout
        .with_disconnect_retention(3600)  # 1 hour retention after disconnect
        .with_max_sessions(1000)
        .with_send_queue_frames(64)
    )
    assert (config.idle_timeout, config.disconnect_retention, config.max_sessions) == (
        300,
        3600,
        1000,
    )
    assert config.send_queue_frames == 64
    assert SessionManagerConfig() == SessionManagerConfig().with_max_sessions(1000)


async def test_a_1013_refusal_stores_no_session() -> None:
    # A client refused for want of room backs off and retries, as the protocol tells
    # it to: no retry may leave a session behind.
    async with run_server(max_sessions=1) as server, attach(server, "held", create=True):
        for attempt in range(5):
            async with open_peer(server) as peer:
                await peer.send({"type": "hello"})
                assert (await peer.closed())[0] == 1013
            async with open_peer(server, f"new-{attempt}") as peer:
                await peer.send({"type": "hello", "create": True})
                assert (await peer.closed())[0] == 1013
        listed = await server.manager.list_sessions()
        assert [m.id for m in listed.sessions] == ["held"]


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


class GatedAppends(MemoryStorage):
    """The in-memory store whose appends wait for a permit once ``gate`` is set: an
    append held in the store at a chosen moment, as a slow disk would hold it."""

    gate: asyncio.Semaphore | None = None
    in_store = 0

    async def append_events(
        self,
        session_id: str,
        items: Sequence[tuple[AgentEvent, str | None]],
        *,
        epoch: str | None = None,
    ) -> list[Appended]:
        if self.gate is not None:
            self.in_store += 1
            try:
                await self.gate.acquire()
            finally:
                self.in_store -= 1
        return await super().append_events(session_id, items, epoch=epoch)


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


@pytest.mark.parametrize(
    "setting",
    [{"inbox_limit": 0}, {"inbox_bytes": -1}, {"max_sessions": 0}, {"store_read_timeout": 0}],
)
def test_a_manager_config_that_would_refuse_everything_is_refused(setting: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        SessionManagerConfig(**setting)  # type: ignore[arg-type]


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


async def test_closing_a_session_nobody_is_attached_to_is_its_last_activity(
    manager: SessionManager,
) -> None:
    # As when its actor is live (a close there is a state request, activity first):
    # the session expires one TTL after its close, and a touch after it changes nothing.
    session = await manager.create_session(ttl=3600)
    assert manager.live_actor(session.id) is None
    await asyncio.sleep(0.01)
    await manager.close_session(session.id)
    closed = await manager.get_metadata(session.id)
    assert closed is not None and closed.state == SessionState.CLOSED
    assert closed.last_activity_at > session.metadata.last_activity_at
    assert closed.expires_at == closed.last_activity_at + timedelta(seconds=3600)
    await manager.storage.touch(session.id)
    assert await manager.get_metadata(session.id) == closed
