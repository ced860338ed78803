"""A session parked while Redis is down, past ``--disconnect-retention``: its actor
retires still owing the store ``disconnected``, and the state reaches the store once
Redis answers again (server/owed_states.py). Before (r356), the store kept ``active``
until some later attach: listings by state said so, and cleanup took it for live.

Redis is shut down and started again on the same port, with its append-only file: a
real outage, as an operator's restart of Redis is. The retired actor's write is fenced:
a newer attach, on another instance or on this one, is never written over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from bamboo_session.protocol.models import SessionState
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.redis_server import RedisServer, prefix_for, start_redis_server
from tests.support import attach, get, opened, run_server

# Parked for a second, looked at every 0.3 s: an outage of a few seconds outlasts it.
OPTIONS: dict[str, Any] = {"disconnect_retention": 1.0, "idle_timeout": 0.3}


def store_url(redis: RedisServer, tmp_path: Path) -> str:
    # The default heartbeat (30 s), far longer than the outages here: the instance is
    # not taken for dead, whose sessions its own sweep would park (presence.py).
    return redis.url(prefix=prefix_for(tmp_path))


async def listed(server: BambooServer, state: str) -> list[str]:
    """The ids ``GET /api/v1/sessions?state=`` lists (none while the store fails)."""
    status, body = await get(server, f"/api/v1/sessions?state={state}")
    return [session["id"] for session in body["sessions"]] if status == 200 else []


async def stored_state(server: BambooServer, session_id: str) -> str:
    status, body = await get(server, f"/api/v1/sessions/{session_id}")
    assert status == 200, body
    state: str = body["metadata"]["state"]
    return state


async def parked_through_an_outage(
    server: BambooServer, redis: RedisServer, session_id: str
) -> None:
    """A peer attached to ``session_id`` leaves while Redis is down: the park cannot be
    written, and the actor retires at the end of its retention, still owing it."""
    async with attach(server, session_id, create=True):
        redis.stop()
    await eventually(lambda: server.manager.live_actor(session_id) is None, timeout=20)
    assert len(server.manager.owed_states) == 1


async def test_a_session_parked_through_an_outage_is_listed_disconnected_once_redis_is_back(
    tmp_path: Path,
) -> None:
    redis = start_redis_server(tmp_path / "redis")
    try:
        async with run_server(store=store_url(redis, tmp_path), **OPTIONS) as server:
            await parked_through_an_outage(server, redis, "outage")
            owed = server.manager.owed_states
            with capture_logs() as logs:
                await eventually(lambda: owed.outages.failing("write") > 0, timeout=10)
                await redis.start_in_loop()
                assert await listed(server, "active") == ["outage"]  # the state owed
                # A round a second.
                await eventually(lambda: listed(server, "disconnected"), timeout=20)
                await eventually(lambda: len(owed) == 0)  # its round ends
            assert await listed(server, "disconnected") == ["outage"]
            assert await listed(server, "active") == []
            assert [e["written"] for e in logs if e["event"] == "owed states written"] == [1]
            # The rounds that failed meanwhile: one line as the first did, one now.
            assert len([e for e in logs if e["event"] == "writing an owed state failed"]) == 1
            assert any(e["event"] == "owed state write works again" for e in logs)
    finally:
        redis.stop()


async def test_an_attach_on_another_instance_after_the_outage_is_not_written_over(
    tmp_path: Path,
) -> None:
    """Server A owes the session its park; Redis back, a peer attaches on B (the store
    held it ``active``: B writes nothing, and registers the peer in presence). A's
    round (run by hand here, after the attach) leaves it ``active``, and drops what it
    owed: B's to write now, which it does once its peer leaves."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = store_url(redis, tmp_path)
        async with run_server(store=url, **OPTIONS) as a, run_server(store=url, **OPTIONS) as b:
            owed = a.manager.owed_states
            owed.retry_every = 3600.0  # no round but those this test runs
            await parked_through_an_outage(a, redis, "taken")
            await redis.start_in_loop()
            async with attach(b, "taken") as (_, welcome):
                assert welcome["session"]["state"] == SessionState.ACTIVE.value
                assert await owed.write_owed() == 0
                assert len(owed) == 0
                assert await stored_state(b, "taken") == "active"
            await eventually(lambda: listed(b, "disconnected"), timeout=20)
            assert owed.written == 0
    finally:
        redis.stop()


async def test_an_attach_on_this_instance_after_the_outage_is_not_written_over(
    tmp_path: Path,
) -> None:
    """The owed state waits while this instance has an actor for the session again:
    that actor owns its state (``active`` while its peer is attached, and the park it
    writes itself once the peer leaves)."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        async with run_server(store=store_url(redis, tmp_path), **OPTIONS) as server:
            owed = server.manager.owed_states
            owed.retry_every = 3600.0
            await parked_through_an_outage(server, redis, "back")
            await redis.start_in_loop()
            async with attach(server, "back"):
                for _ in range(3):
                    assert await owed.write_owed() == 0
                    assert await stored_state(server, "back") == "active"
                assert len(owed) == 1
            await eventually(lambda: listed(server, "disconnected"), timeout=20)
            await eventually(lambda: server.manager.live_actor("back") is None, timeout=20)

            async def dropped() -> bool:
                await owed.write_owed()
                return len(owed) == 0

            await eventually(dropped, timeout=20)
            assert await listed(server, "disconnected") == ["back"]
    finally:
        redis.stop()


async def test_a_stop_writes_what_is_still_owed_in_a_last_round(tmp_path: Path) -> None:
    """Redis back, and the server stops before a round wrote the state (no round runs
    here but the stop's): its last round writes it, and says so. Read back after by a
    store that sweeps nothing, so that only this server's write can have parked it."""
    redis = start_redis_server(tmp_path / "redis")
    try:
        url = store_url(redis, tmp_path)
        with capture_logs() as logs:
            async with run_server(store=url, **OPTIONS) as server:
                server.manager.owed_states.retry_every = 3600.0
                await parked_through_an_outage(server, redis, "stopping")
                await redis.start_in_loop()
                assert await stored_state(server, "stopping") == "active"
        (written,) = [e for e in logs if e["event"] == "owed states written at stop"]
        assert (written["owed"], written["written"], written["left"]) == (1, 1, 0)
        async with opened(url) as store:
            metadata = await store.get_metadata("stopping")
            assert metadata is not None and metadata.state == SessionState.DISCONNECTED
    finally:
        redis.stop()
