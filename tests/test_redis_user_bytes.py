"""The bound on what one user's sessions store together (``max_user_bytes``) on a Redis
store shared by two instances: append.lua checks it against the user's sum in the same
script that stores, so instances racing to fill sessions of one user never take it past
the bound together; a delete on either instance frees room for both."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest

from bamboo_session.persistence import Storage, UserFull, open_storage
from bamboo_session.persistence.events import stored_size
from bamboo_session.persistence.redis import RedisStorage
from bamboo_session.protocol.events import encode_event
from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from tests.redis_server import RedisServer, prefix_for

USER = "u 1"  # a space in it: the script's error carries it whole


@pytest.fixture
def url(redis_server: RedisServer, tmp_path: Path) -> Callable[[], str]:
    return lambda: redis_server.url(prefix=prefix_for(tmp_path))


async def test_two_instances_filling_one_users_sessions_stay_within_the_bound(
    url: Callable[[], str],
) -> None:
    cap = 20_000
    a = cast(RedisStorage, await open_storage(url(), max_user_bytes=cap))
    b = await open_storage(url(), max_user_bytes=cap)
    try:
        for n, store in enumerate((a, b, a, b)):
            await store.create_session(Session.new(f"s{n}", user_id=USER))
        event = AgentEvent.token("x" * 200)

        async def fill(store: Storage, session_id: str) -> int:
            stored = 0
            with contextlib.suppress(UserFull):
                while stored < 200:  # far past the bound: never refused fails the test
                    await store.append_event(session_id, event)
                    stored += 1
            return stored

        stores = (a, b, a, b)
        counts = await asyncio.gather(*(fill(s, f"s{n}") for n, s in enumerate(stores)))
        per_event = stored_size(encode_event(event), None)
        sessions = await b.list_user_sessions(USER)
        total = sum(meta.stored_bytes for meta in sessions)
        assert total == per_event * sum(counts)
        assert cap - per_event < total <= cap
        # The refusal names the user, whole, and the bound.
        with pytest.raises(UserFull) as refused:
            await b.append_event("s0", event)
        assert refused.value.user_id == USER and refused.value.cap == cap
        assert f"user {USER!r}" in str(refused.value)
        # A closed session still counts; deleted on one instance, its room is the
        # other's too.
        await a.update_session_state("s0", SessionState.CLOSED)
        with pytest.raises(UserFull):
            await a.append_event("s1", event)
        await b.delete_session("s0")
        assert (await a.append_event("s1", event)).seq == counts[1] + 1
        # The user's sum is what its sessions hold.
        held = await a.redis.call("HGET", a.layout.index + "userbytes", USER)
        left = sum(meta.stored_bytes for meta in await a.list_user_sessions(USER))
        assert int(held) == left == total - per_event * counts[0] + per_event
    finally:
        await a.close()
        await b.close()
