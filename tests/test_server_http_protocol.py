"""Integration tests of HTTP itself on the WebSocket port: only GET and HEAD are
served (405 otherwise, 426 for a plain GET on a stream path), HEAD answers as GET
without the body, every answer says its connection closes, every error has a JSON body
(414, 431, a request with a body, a failed upgrade), and numbers out of range or not
plain digits are 400. On every storage backend (tests/server_backends.py)."""

from __future__ import annotations

import asyncio
import http.client
import json
import urllib.error
import urllib.request

import pytest

from tests.http_support import error_of, raw_http
from tests.server_backends import pytest_generate_tests, server_store
from tests.support import attach, get, run_server, token

__all__ = ["pytest_generate_tests", "server_store"]  # the store each test runs on
pytestmark = pytest.mark.usefixtures("server_store")


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
