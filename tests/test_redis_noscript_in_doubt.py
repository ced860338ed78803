"""A script's ``NOSCRIPT`` reply lost (Redis's script cache flushed, then the reply to
the ``EVALSHA`` lost with its connection) is in doubt as any lost reply of a write is:
the store cannot tell it from the script's own reply. An append's publisher and a
state change's requester are each closed 1011 as for their other doubts, told nothing
untrue; Redis never ran the script, so the resume replays nothing and shows the state
as it was, and the resend (the same key) is made once. A redis-server of the test's
own (``SCRIPT FLUSH``), a proxy that loses the reply, a real server, real peers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis.asyncio

from bamboo_session.persistence.redis.scripts import SCRIPTS
from bamboo_session.server.failures import PUBLISH_IN_DOUBT, STATE_IN_DOUBT
from tests.redis_server import RedisServer, prefix_for, store_through_proxy
from tests.support import attach, run_server
from tests.test_redis_append_in_doubt import (
    IN_DOUBT,
    answers_and_events,
    check_resume,
    publish_in_doubt,
    streaming,
)
from tests.test_redis_state_in_doubt import CLOSE, SLACK, read_until_close

APPEND_SCRIPT = SCRIPTS["append"].sha.encode()
STATE_SCRIPT = SCRIPTS["state"].sha.encode()


async def flush_scripts(server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=server.port)
    try:
        await client.script_flush()
    finally:
        await client.aclose()


async def test_an_append_whose_noscript_reply_was_lost_closes_its_publisher(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis_server = start_redis("redis")
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        streaming(store) as (server, publisher, viewer, welcome),
    ):
        await flush_scripts(redis_server)

        def lose() -> None:
            proxy.lose_reply_to(APPEND_SCRIPT)

        code, frames = await publish_in_doubt(publisher, lose, lambda: None)
        assert (code, publisher.ws.close_reason) == (IN_DOUBT, PUBLISH_IN_DOUBT[1])
        assert answers_and_events(frames) == []
        assert proxy.lost == 1
        await check_resume(server, welcome["epoch"], False, viewer)


async def test_a_state_change_whose_noscript_reply_was_lost_closes_its_requester(
    start_redis: Callable[[str], RedisServer], tmp_path: Path
) -> None:
    redis_server = start_redis("redis")
    async with (
        store_through_proxy(redis_server, prefix_for(tmp_path)) as (proxy, store),
        run_server(store=store) as server,
        attach(server, "s", create=True) as (requester, welcome),
        attach(server, "s") as (viewer, _),
    ):
        await flush_scripts(redis_server)
        proxy.lose_reply_to(STATE_SCRIPT)
        await requester.send(CLOSE)
        code, reason, frames = await read_until_close(requester, SLACK)
        assert (code, reason, frames) == (1011, STATE_IN_DOUBT[1], [])
        assert proxy.lost == 1
        async with attach(server, "s", last_seq=0, epoch=welcome["epoch"]) as (again, resumed):
            assert (resumed["resumed"], resumed["replay"]) == (True, 0)
            assert resumed["session"]["state"] == "active"  # not closed: never ran
            await again.send(CLOSE)
            assert (await again.recv_type("ack"))["seq"] == 0
        assert (await viewer.recv_type("closed", timeout=SLACK))["reason"] == "session closed"
