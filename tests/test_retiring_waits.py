"""Calls that wait for their session's actor to retire, the store holding up what that
actor still has to store (a JSONL log sync held in its thread): an in-process delete,
and a creation that replaces the expired session, give up at the read deadline
(StoreTimeout, nothing deleted or created), as an append that meets a retiring actor
does (tests/test_retiring_append.py); once the store answers, they work."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent
from bamboo_session.protocol.models import SessionState
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.pages import StoreTimeout
from tests.held_delete_support import EVENT_A, closed_with, held_log_sync, scene
from tests.support import attach, get, open_peer

NOT_DELETED = {"type": "closed", "reason": "session not deleted"}

DEADLINE = 0.5


@asynccontextmanager
async def append_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[SessionManager, asyncio.Task[object], Callable[[], None]]]:
    """A manager whose session ``a``'s actor stores an append the store holds at its
    log sync: the manager, the held append's task, and what releases it (at the
    block's end at the latest)."""
    config = SessionManagerConfig(store_read_timeout=DEADLINE)
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path, wal=False)) as storage:
        async with SessionManager(config, storage) as manager:
            await manager.create_session(session_id="a")
            started, release = held_log_sync(monkeypatch)
            held = asyncio.create_task(manager.append_event("a", AgentEvent.token("a1")))
            try:
                assert await asyncio.to_thread(started.wait, 10)
                yield manager, held, release.set
            finally:
                release.set()
                await asyncio.wait([held])


async def test_a_delete_whose_actor_the_store_holds_up_ends_at_the_read_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with append_held(tmp_path, monkeypatch) as (manager, held, release):
        async with asyncio.timeout(DEADLINE + 5):  # unbounded, it hangs here
            with pytest.raises(StoreTimeout, match="no answer from the store"):
                await manager.delete_session("a")
        assert not held.done()  # the bound gave up, not the store's answer
        release()
        assert (await held).seq == 1  # type: ignore[attr-defined]
        assert [e.seq for e in await manager.read_events("a")] == [1]  # not deleted
        await manager.delete_session("a")
        assert await manager.storage.get_metadata("a") is None


async def test_a_creation_replacing_an_expired_session_whose_actor_is_held_ends_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session expires in the store (as its TTL running out would) while its actor
    stores the held append: a get-or-create of it (a ``hello`` with ``create``) ends
    that actor first, and gives up at the read deadline, nothing created."""
    async with append_held(tmp_path, monkeypatch) as (manager, held, release):
        old = await manager.storage.get_metadata("a")
        assert old is not None
        await manager.storage.update_session_state("a", SessionState.EXPIRED)
        async with asyncio.timeout(DEADLINE + 5):  # unbounded, it hangs here
            with pytest.raises(StoreTimeout, match="no answer from the store"):
                await manager.ensure_session("a")
        assert not held.done()
        release()
        await asyncio.wait([held])
        kept = await manager.storage.get_metadata("a")
        assert kept is not None and kept.epoch == old.epoch  # not replaced
        created = await manager.ensure_session("a")
        assert created.epoch != old.epoch and created.state != SessionState.EXPIRED


async def test_the_connections_of_a_delete_that_timed_out_are_told_1011_once_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete that gave up on the actor (StoreTimeout) leaves no hold behind and no
    connection open in no room: once the store answers, the agent gets its ack, then
    1011 (resume); a second delete meanwhile gives up the same way, and one after the
    store answered deletes the session."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        async with attach(s.server, role="agent") as (agent, welcome):
            session_id = welcome["session"]["id"]
            started, release = held_log_sync(monkeypatch)
            await agent.send(EVENT_A)
            try:
                assert await asyncio.to_thread(started.wait, 10)
                for _ in range(2):
                    async with asyncio.timeout(DEADLINE + 5):  # unbounded, it hangs here
                        with pytest.raises(StoreTimeout, match="no answer from the store"):
                            await s.manager.delete_session(session_id)
                    assert not s.manager.actors.holds.holds(session_id)
            finally:
                release.set()
            assert (await agent.recv_type("ack"))["seq"] == 1
            assert (await closed_with(agent, 1011))[-1] == NOT_DELETED
        assert await s.events(session_id) == [1]
        await s.manager.delete_session(session_id)
        status, _body = await get(s.server, f"/api/v1/sessions/{session_id}/events")
        assert status == 404


async def test_a_hello_creating_over_an_expired_session_whose_actor_is_held_gets_1011(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What docs/protocol.md says a client sees: the hello with ``create`` is closed
    with 1011 at the read deadline, nothing created; the old session's agent gets its
    ack once the store answers, then 4404 (``session expired``); a hello then creates."""
    async with scene(tmp_path, monkeypatch, store_read_timeout=DEADLINE) as s:
        async with attach(s.server, "a", role="agent", create=True) as (agent, welcome):
            old_epoch = welcome["session"]["epoch"]
            started, release = held_log_sync(monkeypatch)
            await agent.send(EVENT_A)
            try:
                assert await asyncio.to_thread(started.wait, 10)
                await s.manager.storage.update_session_state("a", SessionState.EXPIRED)
                async with open_peer(s.server, "a") as late:
                    await late.send({"type": "hello", "role": "agent", "create": True})
                    await closed_with(late, 1011)
                kept = await s.manager.storage.get_metadata("a")
                assert kept is not None and kept.epoch == old_epoch  # nothing created
            finally:
                release.set()
            assert (await agent.recv_type("ack"))["seq"] == 1
            assert (await closed_with(agent, 4404))[-1]["reason"] == "session expired"
        async with attach(s.server, "a", role="agent", create=True) as (_agent, welcome):
            assert welcome["session"]["epoch"] != old_epoch
