"""The cleanup of many expired sessions at once, on every store, while a live session
streams: a round removes every expired session (listings by user and state, GETs and
their events all agree it is gone), spares the session that is live, and does not hold
that session's appends until the whole round is over. The sizes here are small; the
large ones (50,000 sessions and more, with 100 sessions streaming) are in
bench/RESULTS.md, "Mass expiry under live load"."""

from __future__ import annotations

import asyncio

import pytest

from bamboo_session.protocol.models import AgentEvent, Session, SessionState
from bamboo_session.server.app import BambooServer
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")

EXPIRED = 1200  # over several of the SQLite store's cleanup steps


async def expired_sessions(server: BambooServer, count: int) -> list[str]:
    """``count`` sessions of user ``gone`` with two events each, in state ``expired``
    (as a TTL run out would leave them), made through the store in groups."""
    storage = server.manager.storage
    ids = [f"gone-{i:05d}" for i in range(count)]

    async def one(session_id: str) -> None:
        await storage.create_session(Session.new(session_id, user_id="gone"))
        await storage.append_events(
            session_id, [(AgentEvent.token("a"), None), (AgentEvent.token("b"), None)]
        )
        await storage.update_session_state(session_id, SessionState.EXPIRED)

    for start in range(0, count, 200):
        await asyncio.gather(*(one(session_id) for session_id in ids[start : start + 200]))
    return ids


async def test_a_round_removes_every_expired_session_and_the_live_one_streams_through_it() -> None:
    async with run_server(cleanup_interval=3600) as server:
        gone = await expired_sessions(server, EXPIRED)
        async with attach(server, "live", create=True, user_id="here") as (peer, _):
            first = await peer.request({"type": "event", "id": 0, "event": token("0")}, "ack")
            cleanup = asyncio.create_task(server.manager.storage.cleanup_expired_sessions())
            # An append sent as the round starts is stored, and acknowledged, before the
            # round is over: the round does not hold the store's writes for its length
            # (the memory store's round never waits on anything, and is over at once).
            ack = await peer.request({"type": "event", "id": 1, "event": token("1")}, "ack")
            assert ack["seq"] == first["seq"] + 1
            assert cleanup.done() == server.config.store.startswith("memory:")
            assert await cleanup == EXPIRED
            acks = [
                await peer.request({"type": "event", "id": i, "event": token(str(i))}, "ack")
                for i in range(2, 5)
            ]
            assert [a["seq"] for a in acks] == [first["seq"] + i for i in range(2, 5)]
        for query in ("user_id=gone", "state=expired"):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert (status, body["total"], body["sessions"]) == (200, 0, [])
        for session_id in (gone[0], gone[EXPIRED // 2], gone[-1]):
            assert (await get(server, f"/api/v1/sessions/{session_id}"))[0] == 404
            assert (await get(server, f"/api/v1/sessions/{session_id}/events"))[0] == 404
        status, body = await get(server, "/api/v1/sessions/live/events")
        assert status == 200 and [e["event"]["content"] for e in body["events"]] == [
            str(i) for i in range(5)
        ]
        assert await server.manager.storage.cleanup_expired_sessions() == 0
