"""An in-process append that meets its session's actor retiring, the store holding up
what that actor still has to store (a JSONL log sync held in its thread): the append
waits no longer than the read deadline (StoreTimeout, nothing posted), as one that meets
a delete does (tests/test_holds.py); once the store answers, the session takes appends
again and has every event acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.pages import StoreTimeout
from tests.held_delete_support import held_log_sync
from tests.instances import eventually

DEADLINE = 0.5


async def test_an_append_that_meets_a_retiring_actor_the_store_holds_up_ends_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One live session at most: session a's append is held at its log sync, then a
    spawn for b evicts a (parked), whose actor retires once that append is stored. A
    second append to a waits for that retirement: StoreTimeout at the read deadline,
    while the held append is still under way (without the bound it waited as long as
    the store, for ever if the store never answers)."""
    config = SessionManagerConfig(max_sessions=1, store_read_timeout=DEADLINE)
    async with await JsonlStorage.open(JsonlStorageConfig(tmp_path, wal=False)) as storage:
        async with SessionManager(config, storage) as manager:
            for session_id in ("a", "b"):
                await manager.create_session(session_id=session_id)
            started, release = held_log_sync(monkeypatch)
            try:
                held = asyncio.create_task(manager.append_event("a", AgentEvent.token("a1")))
                assert await asyncio.to_thread(started.wait, 10)
                evicting = asyncio.create_task(manager.append_event("b", AgentEvent.token("b1")))
                await eventually(lambda: manager.live_actor("a") is None)  # evicted: retiring
                async with asyncio.timeout(DEADLINE + 5):  # unbounded, it hangs here
                    with pytest.raises(StoreTimeout, match="no answer from the store"):
                        await manager.append_event("a", AgentEvent.token("a2"))
                assert not held.done()  # the bound gave up, not the store's answer
            finally:
                release.set()
            assert (await held).seq == 1
            assert (await evicting).seq == 1
            assert (await manager.append_event("a", AgentEvent.token("a3"))).seq == 2
            stored = await manager.read_events("a")
            assert [event.event for event in stored] == [
                AgentEvent.token("a1"),
                AgentEvent.token("a3"),
            ]
