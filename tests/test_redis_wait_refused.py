"""A Redis store with ``wait_replicas`` whose user an ACL refuses ``WAIT``, on a real
redis-server with a real ACL user: the store refuses to open, naming the command and
the setting (every write would otherwise be in doubt); and where ``WAIT`` is refused
after the store opened (the ACL changed under it), an append is in doubt like one its
replicas did not confirm (its publisher closed 1011, the event stored on the primary),
not a failure of the session's actor."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio

from bamboo_session.persistence import OutcomeUnknown, StoreMisconfigured, open_storage
from bamboo_session.protocol.models import AgentEvent, Session
from tests.redis_server import RedisServer
from tests.test_redis_acl import acl_user


async def set_acl(server: RedisServer, *rules: str) -> None:
    admin = redis.asyncio.Redis(port=server.port)
    try:
        await admin.execute_command("ACL", "SETUSER", "bamboo", *rules)
    finally:
        await admin.aclose()


async def test_a_store_that_waits_for_replicas_refuses_to_open_when_wait_is_refused(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("primary")
    url = await acl_user(server, tmp_path, "-wait", wait_replicas=1, wait_timeout_ms=100)
    with pytest.raises(StoreMisconfigured, match=r"wait_replicas=1 .*WAIT"):
        await open_storage(url)


async def test_wait_refused_after_open_leaves_an_append_in_doubt(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    server = start_redis("primary")
    url = await acl_user(server, tmp_path, wait_replicas=1, wait_timeout_ms=100)
    async with await open_storage(url) as store:
        with pytest.raises(OutcomeUnknown):  # no replica: only 0 of 1 confirmed
            await store.create_session(Session.new("s"))
        await set_acl(server, "-wait")
        with pytest.raises(OutcomeUnknown, match="WAIT"):
            await store.append_event("s", AgentEvent.token("a"))
        events = await store.read_events("s")  # (reads need no replica)
        assert [e.event.content for e in events] == ["a"]  # on the primary all the same
