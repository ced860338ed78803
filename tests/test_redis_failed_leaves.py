"""The bound on this process's connections whose presence leave failed in a Redis
outage (server/failed_leaves.py): past it, a failed leave is not remembered, the log
says so once, and the store counts that connection until its heartbeat deadline. The
session's owed park waits for them (tried again each round) rather than taking them
for another instance's peers and dropping the write, which left it ``active``.

A real redis-server, stopped and started again on its port; an in-process server
whose cap is set low (the default is 65,536); what a user sees read over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.persistence.redis.storage import RedisStorage
from bamboo_session.protocol.models import Session
from bamboo_session.server.presence import SharedPresence
from tests.instances import eventually
from tests.proxies import RedisProxy
from tests.redis_server import RedisServer, prefix_for, start_redis_server
from tests.support import attach, get, opened, run_server

CAP = 2
PEERS = 5  # of one session: 3 past the cap
# Long enough that the connections not remembered still count once Redis is back
# (their deadline: two thirds of a heartbeat after their leave at the soonest), and
# that those remembered are not forgotten meanwhile (after a heartbeat), however
# loaded the machine: the default.
HEARTBEAT = 30


async def test_failed_leaves_past_the_cap_are_told_and_counted_until_their_deadline(
    tmp_path: Path,
) -> None:
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = redis.url(prefix=prefix_for(tmp_path), heartbeat=HEARTBEAT)
        async with run_server(store=url, disconnect_retention=1.0, idle_timeout=0.3) as server:
            manager = server.manager
            presence = manager.shared_presence
            assert presence is not None
            presence.failed_leaves.max_count = CAP

            async def seen() -> tuple[str, int]:
                status, body = await get(server, "/api/v1/sessions/capped")
                assert status == 200, body
                return body["metadata"]["state"], body["metadata"]["connections"]

            with capture_logs() as logs:
                async with contextlib.AsyncExitStack() as peers:
                    for _ in range(PEERS):
                        await peers.enter_async_context(attach(server, "capped", create=True))
                    assert await seen() == ("active", PEERS)
                    redis.stop()

                # Every leave failed: CAP remembered, the rest not, and the log says so once.
                def told() -> list[Any]:
                    return [e for e in logs if e["event"].startswith("failed presence leaves")]

                await eventually(lambda: told() and presence.failed_leaves.count == CAP, 20)
                assert [e["error"] for e in told()] == [f"{CAP} remembered, 1 more not"]
                assert told()[0]["log_level"] == "warning"
                await eventually(lambda: manager.live_actor("capped") is None, timeout=20)
                assert len(manager.owed_states) == 1

                await redis.start_in_loop()
                # The owed park's round leaves the remembered ones again; the others
                # still count, and hold the park back, until their deadline.
                await eventually(lambda: presence.failed_leaves.count == 0, timeout=20)
                assert await seen() == ("active", PEERS - CAP)
                assert len(manager.owed_states) == 1
                await eventually(lambda: len(manager.owed_states) == 0, timeout=3 * HEARTBEAT)
                assert await seen() == ("disconnected", 0)
            assert len(told()) == 1
            # Written by the owed park, and said so. Once, in a loaded suite run, the
            # line was missing and the session parked all the same: how the owed state
            # settled says by what (already_parked: a sweep, or a retry of a park
            # whose reply was lost; not reproduced in 19 runs at load 16-28).
            settled = dict(manager.owed_states.settled)
            written = [e["written"] for e in logs if e["event"] == "owed states written"]
            assert (settled, written) == ({"written": 1}, [1]), [
                e for e in logs if "owed" in e["event"] or "presence" in e["event"]
            ]
    finally:
        redis.stop()


async def test_a_failed_leave_whose_retry_is_cancelled_is_remembered_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A stop cancels the owed states' round, maybe in the middle of leaving again a
    connection whose leave failed: it stays remembered, so the stop's last round
    leaves it before the park (forgotten, the park counted it as another process's
    and dropped the write). Redis runs the leave; its reply is held until after the
    cancel (tests/proxies.py)."""
    proxy = RedisProxy(redis_server.port)
    port = await proxy.start()
    try:
        async with opened(f"redis://127.0.0.1:{port}/0?prefix={prefix_for(tmp_path)}") as store:
            assert isinstance(store, RedisStorage)
            await store.create_session(Session.new("left"))
            metadata = await store.get_metadata("left")
            assert metadata is not None
            epoch = metadata.epoch
            assert await store.presence.join("left", "c1", "client", epoch=epoch) == 1
            presence = SharedPresence(store.presence, lambda notice: None)
            # As a leave that failed in an outage leaves it.
            assert presence.failed_leaves.add("left", [("c1", "client")], epoch) == 0
            proxy.hold_reply_to(b"leave")
            leaving = asyncio.create_task(presence.leave_lingering("left"))
            await eventually(lambda: proxy.replies_held == 1)
            leaving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await leaving
            assert presence.failed_leaves.count == 1
            proxy.release_replies()
            assert await presence.count("left") == 0  # left again first, then counted
            assert presence.failed_leaves.count == 0
    finally:
        proxy.release_replies()
        await proxy.close()
