"""A Redis ``closed`` in doubt on one instance, with ``wait_replicas`` (whose notices
go out only once the write's reply is in): Redis ran it, its reply was lost, and so no
notice was published. The session's connections on another instance sharing the store
get ``closed`` and 1000 at once all the same, as from a close acknowledged: the store
that lost the reply reads the session, finds it closed, and publishes the notice.
Before, they stayed attached to the closed session, their publishes refused
``closed``, until their instance's next look (up to ``idle_timeout``). Real
redis-servers (a primary and its replica), a proxy before the primary for one of two
real servers, real WebSocket peers."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from bamboo_session.server.failures import STATE_IN_DOUBT
from tests.redis_server import RedisServer
from tests.support import attach, run_server
from tests.test_redis_state_in_doubt import SLACK, STATE_SCRIPT, load_state_script, read_until_close
from tests.test_redis_state_in_doubt_reload import (
    CLOSE,
    IDLE_TIMEOUT,
    replicated_through_proxy,
    stored_state,
)


async def test_a_close_that_stands_with_no_notice_ends_the_connections_on_another_instance(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    async with replicated_through_proxy(start_redis, tmp_path) as (proxy, primary, store):
        direct = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{primary.port}/", store)
        async with (
            run_server(store=store, idle_timeout=IDLE_TIMEOUT) as here,
            run_server(store=direct, idle_timeout=IDLE_TIMEOUT) as elsewhere,
            attach(here, "s", create=True) as (requester, _),
            attach(elsewhere, "s") as (viewer, _),
        ):
            await load_state_script(primary)
            proxy.lose_reply_to(STATE_SCRIPT)
            await requester.send(CLOSE)
            code, reason, frames = await read_until_close(requester, SLACK)
            assert (code, reason, frames) == (1011, STATE_IN_DOUBT[1], [])
            assert await stored_state(elsewhere, "s") == "closed"
            closed = await viewer.recv_type("closed", timeout=SLACK)
            assert closed["reason"] == "session closed"
            code, _, _ = await read_until_close(viewer, SLACK)
            assert code == 1000
