"""Integration tests of the GET endpoints on the WebSocket port: health, readiness
and metrics; a session's detail, its events and its history (whole, or in pages); 404
for unknown sessions and paths. On every storage backend (tests/server_backends.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.http_support import raw_http
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


async def test_readyz_probes_the_store_after_a_failed_append(tmp_path: Path) -> None:
    # A store in a directory, which the probe writes into (the other stores are retried
    # after a while instead).
    async with run_server(store=f"jsonl://{tmp_path / 'probed'}") as server:
        # As the actors report it when an append fails (disk full, say):
        server.manager.append_health.failed("s1", "storage failed: [Errno 28] No space left", 1)
        # The store's directory takes a frame's worth of bytes again: ready at once,
        # though no append came to prove it (a balancer sends none to a 503).
        assert await get(server, "/readyz") == (200, "ready\n")
        assert server.manager.append_health.failure is None


async def test_readyz_is_503_with_a_closed_store() -> None:
    async with run_server() as server:
        assert server.storage is not None
        await server.storage.close()
        status, body = await get(server, "/readyz")
        assert (status, body) == (503, "not ready: storage is not open\n")


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
        # Beyond PROTOCOL.md's answer: the epoch of the log the page was read from.
        assert body["epoch"] == welcome["epoch"]


async def append_messages(peer: Any, contents: list[str], role: str = "user") -> None:
    """Appends one message per content, pipelined: every frame, then every ack."""
    for i, content in enumerate(contents):
        message = {"role": role, "content": content}
        await peer.send({"type": "message", "id": i, "message": message})
    for _ in contents:
        await peer.recv_type("ack")


async def test_session_detail_without_parameters_is_the_whole_history() -> None:
    # PROTOCOL.md: GET /api/v1/sessions/{id} is {"metadata", "messages"}, the whole
    # history; a client written from it sends no parameters, and must not get the
    # newest 100 messages of 150 as if they were all.
    async with run_server() as server, attach(server) as (peer, welcome):
        path = f"/api/v1/sessions/{welcome['session']['id']}"
        status, body = await get(server, path)
        assert status == 200 and body["metadata"]["message_count"] == 0
        assert (body["messages"], body["start"], body["has_more"]) == ([], 0, False)
        await append_messages(peer, [str(i) for i in range(150)])
        status, body = await get(server, path)
        assert status == 200 and body["metadata"]["message_count"] == 150
        assert [m["content"] for m in body["messages"]] == [str(i) for i in range(150)]
        assert (body["start"], body["has_more"]) == (0, False)
        status, headers, head_body = await raw_http(
            server, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
        )
        # The GET's head: its body streamed in chunks, its length unknown beforehand.
        assert (status, head_body) == (200, b"") and headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers


async def test_a_whole_history_longer_than_a_page_is_answered_whole() -> None:
    # It was 413 too_large past --max-history-page messages or --max-page-bytes of
    # them: a client written from PROTOCOL.md failed on any long session.
    async with run_server(max_history_page=100, max_page_bytes=10_000) as server:
        async with attach(server) as (peer, welcome):
            path = f"/api/v1/sessions/{welcome['session']['id']}"
            await append_messages(peer, [f"{i}" + "x" * 1000 for i in range(15)])  # ~17 KB
            await append_messages(peer, [str(i) for i in range(15, 301)])
            status, body = await get(server, path)
            assert status == 200 and body["metadata"]["message_count"] == 301
            contents = [m["content"] for m in body["messages"]]
            assert contents == [f"{i}" + "x" * 1000 for i in range(15)] + [
                str(i) for i in range(15, 301)
            ]
            assert (body["start"], body["has_more"]) == (0, False)
            status, body = await get(server, f"{path}?limit=15")  # a page stops short
            assert status == 200 and body["has_more"] and len(body["messages"]) == 15
        # One message larger than the bound is a page of its own.
        async with attach(server) as (peer, welcome):
            await append_messages(peer, ["y" * 20_000, "z"])
            status, body = await get(server, f"/api/v1/sessions/{welcome['session']['id']}")
            assert status == 200 and [len(m["content"]) for m in body["messages"]] == [20_000, 1]


async def test_the_whole_history_is_the_one_its_metadata_counts() -> None:
    # Messages appended while answers are read: each holds exactly the messages its
    # metadata counts, from the first, never more, though read in many pages.
    async with run_server(max_page_bytes=1024) as server, attach(server) as (peer, welcome):
        path = f"/api/v1/sessions/{welcome['session']['id']}"
        stop = asyncio.Event()

        async def write() -> None:
            count = 0
            while not stop.is_set() and count < 3000:
                await append_messages(peer, [str(i) for i in range(count, count + 10)])
                count += 10

        writer = asyncio.create_task(write())
        try:
            for _ in range(20):
                status, body = await get(server, path)
                assert status == 200, body
                count = body["metadata"]["message_count"]
                assert [m["content"] for m in body["messages"]] == [str(i) for i in range(count)]
        finally:
            stop.set()
            await writer


async def test_session_detail_with_limit_or_before_pages_its_history() -> None:
    async with run_server(max_history_page=50, max_page_bytes=200_000) as server:
        async with attach(server) as (peer, welcome):
            session_id = welcome["session"]["id"]
            await append_messages(peer, [str(i) for i in range(120)])
            path = f"/api/v1/sessions/{session_id}"
            # Without parameters, the whole history: more than a page holds.
            status, body = await get(server, path)
            assert status == 200 and len(body["messages"]) == 120
            status, body = await get(server, f"{path}?limit=100")
            assert status == 200 and body["metadata"]["message_count"] == 120
            assert len(body["messages"]) == 50  # lowered to --max-history-page
            assert body["messages"][-1]["content"] == "119"
            assert (body["start"], body["has_more"]) == (70, True)
            status, body = await get(server, f"{path}?before=120")  # limit 100, lowered
            assert (len(body["messages"]), body["start"], body["has_more"]) == (50, 70, True)
            status, body = await get(server, f"{path}?limit=30&before=70")
            assert [m["content"] for m in body["messages"]] == [str(i) for i in range(40, 70)]
            assert (body["start"], body["has_more"]) == (40, True)
            status, body = await get(server, f"{path}?limit=50&before=10")
            assert [m["content"] for m in body["messages"]] == [str(i) for i in range(10)]
            assert (body["start"], body["has_more"]) == (0, False)
            # Bounded in bytes too: 100 KB messages, 200 KB pages.
            await append_messages(peer, ["x" * 100_000] * 3)
            status, body = await get(server, f"{path}?limit=100")
            assert len(body["messages"]) == 1 and body["start"] == 122 and body["has_more"]
            for query in ("limit=0", "limit=x", "before=-1", "before=1.5"):
                status, body = await get(server, f"{path}?{query}")
                assert status == 400 and body["error"]["code"] == "bad_request", query


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


async def test_paths_with_a_trailing_slash_are_404_as_any_other() -> None:
    # docs/protocol.md: the three session paths, and "any other path is 404". A slash
    # after a session's id was served as the session, though not after its events nor
    # after the list: a client's URL joined wrong must not work on one path only.
    async with run_server() as server, attach(server, "there", create=True):
        assert (await get(server, "/api/v1/sessions/there"))[0] == 200
        for path in (
            "/api/v1/sessions/there/",
            "/api/v1/sessions/there/events/",
            "/api/v1/sessions/",
            "/api/v1/sessions/there//",
        ):
            status, body = await get(server, path)
            assert status == 404 and body["error"]["code"] == "not_found", path
