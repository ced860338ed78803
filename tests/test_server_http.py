"""Integration tests of the GET endpoints on the WebSocket port."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import pytest

from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


async def test_health_readiness_and_metrics() -> None:
    async with run_server() as server:
        assert await get(server, "/healthz") == (200, "ok\n")
        assert await get(server, "/readyz") == (200, "ready\n")
        async with attach(server) as (peer, _):
            await peer.request({"type": "event", "id": 1, "event": token("x")}, "ack")
            await peer.request({"type": "launch", "id": 2}, "error")
            status, text = await get(server, "/metrics")
        assert status == 200
        for line in (
            "bamboo_connections 1.0",
            "bamboo_events_appended_total 1.0",
            'bamboo_errors_total{code="bad_request"} 1.0',
            "bamboo_live_actors 1.0",
        ):
            assert line in text, line


async def test_list_sessions_filters_sorts_and_pages() -> None:
    async with run_server() as server:
        manager = server.manager
        for i in range(5):
            await manager.create_session(
                user_id="alice" if i % 2 == 0 else "bob", title=f"chat {i}"
            )
        status, body = await get(server, "/api/v1/sessions?user_id=alice&sort_order=asc")
        assert status == 200 and body["total"] == 3 and body["offset"] == 0
        assert [s["title"] for s in body["sessions"]] == ["chat 0", "chat 2", "chat 4"]
        status, body = await get(server, "/api/v1/sessions?limit=2&offset=1&sort_by=created_at")
        assert status == 200 and body["total"] == 5 and body["limit"] == 2
        assert [s["title"] for s in body["sessions"]] == ["chat 3", "chat 2"]
        status, body = await get(server, "/api/v1/sessions?title_contains=chat%203")
        assert [s["title"] for s in body["sessions"]] == ["chat 3"]
        status, body = await get(server, "/api/v1/sessions?state=active&user_id=bob")
        assert body["total"] == 2


async def test_list_sessions_refuses_bad_parameters() -> None:
    async with run_server() as server:
        for query in (
            "sort_by=colour",
            "limit=0",
            "limit=x",
            "state=sleepy",
            "created_after=yesterday",
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 400 and body["error"]["code"] == "bad_request", query


async def test_session_detail_and_events() -> None:
    async with run_server() as server, attach(server) as (peer, welcome):
        session_id = welcome["session"]["id"]
        await peer.request(
            {"type": "message", "id": 1, "message": {"role": "user", "content": "hi"}}, "ack"
        )
        await peer.request({"type": "event", "id": 2, "event": token("t")}, "ack")
        status, body = await get(server, f"/api/v1/sessions/{session_id}")
        assert status == 200 and body["metadata"]["id"] == session_id
        assert body["metadata"]["message_count"] == 1 and body["metadata"]["connections"] == 1
        assert [m["content"] for m in body["messages"]] == ["hi"]
        status, body = await get(server, f"/api/v1/sessions/{session_id}/events?after_seq=1")
        assert status == 200 and body["last_seq"] == 2
        assert [(e["seq"], e["event"]) for e in body["events"]] == [(2, token("t"))]


async def test_unknown_sessions_and_paths_are_404() -> None:
    async with run_server() as server:
        for path in (
            "/api/v1/sessions/nope",
            "/api/v1/sessions/nope/events",
            "/nothing",
            "/api/v1/sessions/x/y",
        ):
            status, body = await get(server, path)
            assert status == 404 and body["error"]["code"] == "not_found", path


async def test_only_get_is_served() -> None:
    async with run_server() as server:
        for method in ("POST", "DELETE", "PUT"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/healthz", method=method
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
            refused.value.close()
            assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"
