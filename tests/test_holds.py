"""Who meets a delete under way, and how long they wait for its outcome: an in-process
append or close waits no longer than the read deadline (StoreTimeout, on a Redis frozen
with SIGSTOP mid-delete)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bamboo_session.persistence import SessionNotFound, open_storage
from bamboo_session.protocol import AgentEvent
from bamboo_session.server.manager import SessionManager, SessionManagerConfig
from bamboo_session.server.pages import StoreTimeout
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for
from tests.test_store_stalls import frozen

DEADLINE = 0.5


async def test_in_process_appends_and_closes_give_up_on_a_frozen_delete_at_the_read_deadline(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    """The store's delete hangs (its Redis stopped): an append or a close that meets it
    gets StoreTimeout at the read deadline while the delete is still under way, not a
    wait as long as the store's; once Redis answers, the delete ends and the session
    is gone."""
    redis = start_redis("redis")
    storage = await open_storage(redis.url(prefix=prefix_for(tmp_path)))
    config = SessionManagerConfig(store_read_timeout=DEADLINE)
    async with SessionManager(config, storage) as manager:
        await manager.create_session("u1", session_id="doomed")  # stored, no actor
        with frozen(redis):
            deleting = asyncio.create_task(manager.delete_session("doomed"))
            await eventually(lambda: manager.actors.holds.holds("doomed"))
            with pytest.raises(StoreTimeout, match="no answer from the store"):
                await manager.append_event("doomed", AgentEvent.token("late"))
            with pytest.raises(StoreTimeout, match="no answer from the store"):
                await manager.close_session("doomed")
            assert not deleting.done()  # the bound gave up, not the delete's end
        await deleting
        with pytest.raises(SessionNotFound):
            await manager.append_event("doomed", AgentEvent.token("after"))
    await storage.close()
