"""Integration tests of the GET endpoints on the WebSocket port."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

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


async def test_a_listing_page_is_bounded_in_bytes() -> None:
    async with run_server(max_page_bytes=4096) as server:
        for i in range(10):
            await server.manager.create_session("u", "t" * 1000, extra={"n": i})
        status, body = await get(server, "/api/v1/sessions?limit=10")
        assert status == 200 and body["total"] == 10 and body["limit"] == 10
        assert 1 <= len(body["sessions"]) < 10  # about 1 KB each: what 4 KiB holds
        offset = len(body["sessions"])
        status, more = await get(server, f"/api/v1/sessions?limit=10&offset={offset}")
        assert more["sessions"] and more["sessions"][0]["id"] != body["sessions"][-1]["id"]


async def test_list_sessions_refuses_bad_parameters() -> None:
    async with run_server() as server:
        for query in (
            "sort_by=colour",
            "limit=0",
            "limit=x",
            "state=sleepy",
            "created_after=yesterday",
            # Plain digits and RFC 3339 only, as GET /api/v1/sessions/{id} reads them.
            "limit=1e2",
            "limit=100.0",
            "offset=1e3",
            "created_after=1",
            "active_after=1e10",
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 400 and body["error"]["code"] == "bad_request", query


async def test_list_sessions_reads_plain_digits_as_the_other_endpoints_do() -> None:
    # "05" is plain digits: GET /api/v1/sessions/{id}/events takes it as 5, and so
    # does the list (it answered 400 with msgspec's "Expected `int`, got `str`").
    async with run_server() as server:
        for i in range(3):
            await server.manager.create_session("u", f"t{i}")
        status, body = await get(server, "/api/v1/sessions?limit=02&offset=01")
        assert status == 200, body
        assert (body["limit"], body["offset"], len(body["sessions"])) == (2, 1, 2)


async def test_list_sessions_without_a_limit_gets_a_page_a_smaller_max_list_page_allows() -> None:
    # --max-list-page below the default page of 100 sessions: a listing that asked for
    # no size was refused (400 "limit must be 1..2") for the default it never sent.
    async with run_server(max_list_page=2) as server:
        for i in range(3):
            await server.manager.create_session("u", f"t{i}")
        status, body = await get(server, "/api/v1/sessions")
        assert status == 200, body
        assert (body["limit"], len(body["sessions"]), body["total"]) == (2, 2, 3)
        # One message for a limit out of range or not a number, with the range it has
        # here ("limit=x" said "an integer from 0 to 9223372036854775807").
        for query in ("limit=3", "limit=x", "limit=0"):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 400, query
            assert body["error"]["message"] == "limit must be an integer from 1 to 2", query


async def test_list_sessions_takes_times_at_the_ends_of_the_calendar() -> None:
    # Valid RFC 3339 times whose UTC falls outside years 1..9999: a bound below every
    # time, or above every time. Not a 500 (the SQLite store converted them to UTC).
    async with run_server() as server:
        await server.manager.create_session("u", "t")
        early, late = "0001-01-01T00:00:00%2B01:00", "9999-12-31T23:59:59-01:00"
        for query, total in (
            (f"created_after={early}", 1),
            (f"active_after={early}", 1),
            (f"created_before={late}", 1),
            (f"created_after={late}", 0),
            (f"active_after={late}", 0),
            (f"created_before={early}", 0),
        ):
            status, body = await get(server, f"/api/v1/sessions?{query}")
            assert status == 200 and body["total"] == total, (query, body)


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


async def test_only_get_and_head_are_served() -> None:
    async with run_server() as server:
        for method in ("POST", "DELETE", "PUT", "OPTIONS"):
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.port}/healthz", method=method
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
            with refused.value:
                body = json.loads(refused.value.read())
            assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET, HEAD"
            assert body["error"]["code"] == "bad_request"


async def raw_http(server: Any, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends ``request`` as it is; the status, headers and body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def error_of(headers: dict[str, str], body: bytes) -> dict[str, str]:
    assert headers["content-type"] == "application/json", headers
    assert int(headers["content-length"]) == len(body)
    error: dict[str, str] = json.loads(body)["error"]
    return error


async def test_every_http_error_has_a_json_body() -> None:
    async with run_server() as server:
        long_line = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        status, headers, body = await raw_http(server, long_line)
        assert status == 414 and error_of(headers, body)["code"] == "bad_request"
        big_header = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 9000
        status, headers, body = await raw_http(server, big_header + b"\r\n\r\n")
        assert status == 431 and error_of(headers, body)["code"] == "bad_request"
        many = b"".join(b"X-%d: 1\r\n" % i for i in range(300))
        status, headers, body = await raw_http(
            server, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + many + b"\r\n"
        )
        assert status == 431 and error_of(headers, body)["code"] == "bad_request"
        # A request with a body, which websockets used to drop without a word.
        for request in (
            b"POST /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}",
            b"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello",
        ):
            status, headers, body = await raw_http(server, request)
            assert status == 405 and headers["allow"] == "GET, HEAD", request
            assert "without a body" in error_of(headers, body)["message"]
        # A failed upgrade, and a subprotocol refusal.
        upgrade = (
            b"GET /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        )
        status, headers, body = await raw_http(server, upgrade + b"\r\n")
        assert status == 400 and error_of(headers, body)["code"] == "bad_request"
        offer = (
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Protocol: chat.v9\r\n\r\n"
        )
        status, headers, body = await raw_http(server, upgrade + offer)
        assert status == 400 and "subprotocol" in error_of(headers, body)["message"]


def answers_on_one_connection(
    port: int, requests: list[tuple[str, str]]
) -> list[tuple[int, str | None, str | None]]:
    """Sends ``requests`` one after the other through one ``http.client`` connection,
    as keep-alive clients do (Node's default agent, requests.Session, Go's Transport):
    it reuses its socket unless an answer says ``Connection: close``. Each answer's
    status and its ``Connection`` and ``Date`` headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        answers = []
        for method, path in requests:
            connection.request(method, path)
            response = connection.getresponse()
            response.read()
            answers.append(
                (response.status, response.getheader("Connection"), response.getheader("Date"))
            )
        return answers
    finally:
        connection.close()


async def test_every_answer_says_its_connection_closes() -> None:
    """The server answers one request per connection, then closes it: each answer says
    so (RFC 9112 9.6), so that a keep-alive client opens a new connection for its next
    request instead of failing on the closed one (a "socket hang up" in Node)."""
    requests = [
        ("GET", "/healthz"),
        ("GET", "/api/v1/sessions"),
        ("HEAD", "/readyz"),
        ("GET", "/api/v1/sessions/nope"),
        ("GET", "/api/v1/stream/s1"),
        ("GET", "/console"),
        ("GET", "/"),
        ("POST", "/healthz"),
        ("GET", "/healthz"),
    ]
    async with run_server() as server:
        answers = await asyncio.to_thread(answers_on_one_connection, server.port, requests)
    assert [status for status, _, _ in answers] == [200, 200, 200, 404, 426, 200, 302, 405, 200]
    for (_, connection, date), request in zip(answers, requests, strict=True):
        assert connection is not None and "close" in connection.split(", "), request
        assert date is not None and date.endswith(" GMT"), request  # RFC 9110 6.6.1


async def test_a_plain_get_on_a_stream_path_is_426() -> None:
    async with run_server() as server:
        for path in ("/api/v1/stream", "/api/v1/stream/s1"):
            status, headers, body = await raw_http(
                server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            assert status == 426 and headers["upgrade"] == "websocket"
            # Upgrade is named in Connection (RFC 9110 7.8), beside close.
            assert headers["connection"] == "upgrade, close"
            assert error_of(headers, body)["code"] == "bad_request"


async def test_head_answers_as_get_without_the_body() -> None:
    async with run_server() as server:
        for path, length in (("/healthz", 3), ("/readyz", 6)):
            status, headers, body = await raw_http(
                server, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            assert (status, body) == (200, b"")
            assert int(headers["content-length"]) == length
        status, headers, body = await raw_http(
            server, b"HEAD /api/v1/sessions/nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert (status, body) == (404, b"") and headers["content-type"] == "application/json"
        # Every answer, the early refusals too: a stream path, a Host not allowed.
        for request in (
            b"HEAD /api/v1/stream/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"HEAD /healthz HTTP/1.1\r\nHost: evil.example\r\n\r\n",
            b"HEAD /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: 127.0.0.1\r\n\r\n",
        ):
            status, headers, body = await raw_http(server, request)
            assert status in (400, 403, 426) and body == b"", request
            assert int(headers["content-length"]) > 0


async def test_other_methods_on_a_stream_path_are_405_not_426() -> None:
    async with run_server() as server:
        status, headers, body = await raw_http(
            server, b"POST /api/v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert error_of(headers, body)["code"] == "bad_request"


async def test_a_missing_console_file_has_the_json_error_body() -> None:
    async with run_server() as server:
        for path in ("/console/nope.js", "/client/nope.js", "/client/"):
            status, headers, body = await raw_http(
                server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            )
            assert status == 404 and error_of(headers, body)["code"] == "not_found", path


async def test_numbers_out_of_range_or_not_plain_digits_are_400() -> None:
    async with run_server() as server:
        async with attach(server, "n", create=True) as (peer, _):
            await peer.request({"type": "event", "id": 1, "event": token("x")}, "ack")
        huge = "99999999999999999999999"
        for path in (
            f"/api/v1/sessions?offset={huge}",
            f"/api/v1/sessions?limit={huge}",
            "/api/v1/sessions?limit=1_0",
            f"/api/v1/sessions/n/events?after_seq={huge}",
            "/api/v1/sessions/n/events?after_seq=9223372036854775808",
            "/api/v1/sessions/n/events?limit=1_0",
            "/api/v1/sessions/n/events?limit=%205",
            "/api/v1/sessions/n?before=-1",
        ):
            status, body = await get(server, path)
            assert status == 400 and body["error"]["code"] == "bad_request", (path, body)
        status, body = await get(server, "/api/v1/sessions/n/events?after_seq=9223372036854775807")
        assert status == 200 and body["events"] == []
