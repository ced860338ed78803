"""The SessionManager as an in-process Python API, with no socket, on real files:
sessions created, connected to, appended to, received from, replayed on reconnect,
listed and deleted; idempotency keys and their window; batches; what cannot be stored;
the bound on live sessions; its config; the example that uses it."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import weakref
from datetime import timedelta
from pathlib import Path

import pytest

from bamboo_session.persistence import SessionFilter
from bamboo_session.persistence.base import SessionClosed, SessionNotFound
from bamboo_session.protocol import AgentEvent, Message
from bamboo_session.protocol.models import SessionState, Token
from bamboo_session.server.manager import ServerBusy, SessionManager, SessionManagerConfig
from tests.manager_fixtures import manager_fixture  # noqa: F401 (a fixture)
from tests.support import attach, open_peer, run_server

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.parametrize(
    "setting",
    [{"inbox_limit": 0}, {"inbox_bytes": -1}, {"max_sessions": 0}, {"store_read_timeout": 0}],
)
def test_a_manager_config_that_would_refuse_everything_is_refused(setting: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(setting))):
        SessionManagerConfig(**setting)  # type: ignore[arg-type]


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
