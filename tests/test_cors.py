"""CORS on the session API: a page of an origin that may open a WebSocket to the server
may read ``/api/v1/sessions…`` too (errors included), with a preflight for
``Authorization``; no other origin, no other endpoint, never ``null``, never ``*`` and
never with credentials."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from tests.http_support import raw_http
from tests.support import run_server

SECRET = "c" * 32
LOCAL = "http://localhost:5173"
EVIL = "https://evil.example"
EVENTS = "/api/v1/sessions/s1/events?after_seq=0&limit=1"


async def answer(
    server: Any, path: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return await raw_http(server, ("\r\n".join(lines) + "\r\n\r\n").encode())


async def preflight(server: Any, origin: str, method: str = "GET") -> tuple[int, dict[str, str]]:
    status, headers, body = await answer(
        server,
        EVENTS,
        {
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization",
        },
        "OPTIONS",
    )
    if status != 204:
        headers["error"] = json.loads(body)["error"]
    else:
        assert body == b"" and "content-length" not in headers
    return status, headers


def assert_no_cors(headers: dict[str, str]) -> None:
    assert not any(name.startswith("access-control-") for name in headers), headers


def bearer(sub: str) -> str:
    token = jwt.encode({"sub": sub, "exp": int(time.time()) + 60}, SECRET, "HS256")
    return f"Bearer {token}"


async def test_an_allowed_origin_reads_answers_and_errors() -> None:
    async with run_server() as server:
        await server.manager.create_session("u", session_id="s1")
        for path, expected in (
            (EVENTS, 200),
            ("/api/v1/sessions/s1", 200),
            ("/api/v1/sessions/s2", 404),
        ):
            for method in ("GET", "HEAD"):
                status, headers, _ = await answer(server, path, {"Origin": LOCAL}, method)
                assert status == expected, (path, method)
                assert headers["access-control-allow-origin"] == LOCAL, (path, method)
                assert headers["vary"] == "Origin"
                assert "access-control-allow-credentials" not in headers
        # The client module keeps its own "*".
        status, headers, _ = await answer(server, "/client/bamboo.js", {"Origin": LOCAL})
        assert status == 200 and headers["access-control-allow-origin"] == "*"


async def test_other_origins_get_no_cors_headers() -> None:
    async with run_server() as server:
        await server.manager.create_session("u", session_id="s1")
        for origin in (EVIL, "null", "http://localhost.evil.example", "file://"):
            status, headers, _ = await answer(server, EVENTS, {"Origin": origin})
            assert status == 200, origin  # what a non-browser gets: the browser keeps it
            assert_no_cors(headers)
            assert headers["vary"] == "Origin"
        status, headers, _ = await answer(server, EVENTS, {})
        assert status == 200 and headers["vary"] == "Origin"
        assert_no_cors(headers)


async def test_a_preflight_from_an_allowed_origin_is_answered() -> None:
    async with run_server() as server:
        for method in ("GET", "HEAD"):
            status, headers = await preflight(server, LOCAL, method)
            assert status == 204
            assert headers["access-control-allow-origin"] == LOCAL
            assert headers["access-control-allow-methods"] == "GET, HEAD"
            assert headers["access-control-allow-headers"] == "Authorization"
            assert headers["access-control-max-age"] == "600"
            assert headers["vary"] == "Origin"
            assert "access-control-allow-credentials" not in headers
        # For a method the API does not serve: 405, as the request itself would be.
        status, headers = await preflight(server, LOCAL, "DELETE")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert "access-control-allow-methods" not in headers


async def test_a_preflight_from_another_origin_is_forbidden() -> None:
    async with run_server() as server:
        for origin in (EVIL, "null"):
            status, headers = await preflight(server, origin)
            assert status == 403, origin
            assert headers["error"] == {"code": "forbidden", "message": "origin not allowed"}
            assert_no_cors(headers)


async def test_an_options_that_is_no_preflight_is_405() -> None:
    async with run_server() as server:
        for headers in ({}, {"Origin": LOCAL}, {"Access-Control-Request-Method": "GET"}):
            status, answered, body = await answer(server, EVENTS, headers, "OPTIONS")
            assert status == 405 and answered["allow"] == "GET, HEAD", headers
            assert json.loads(body)["error"]["code"] == "bad_request"


async def test_the_host_check_comes_first() -> None:
    async with run_server() as server:
        status, _, body = await answer(
            server,
            EVENTS,
            {"Origin": LOCAL, "Access-Control-Request-Method": "GET", "Host": "evil.example"},
            "OPTIONS",
        )
        assert status == 400 and b"more than one Host header" in body
        # A refusal of the request's Host, not of a head that does not parse: the page
        # may read it.
        status, headers, body = await answer(server, EVENTS, {"Origin": LOCAL, "Host": "x"})
        assert status == 400 and b"more than one Host header" in body
        assert headers["access-control-allow-origin"] == LOCAL
        status, _, body = await raw_http(
            server,
            b"OPTIONS /healthz HTTP/1.1\r\nHost: rebound.evil.example\r\nOrigin: "
            + LOCAL.encode()
            + b"\r\nAccess-Control-Request-Method: GET\r\n\r\n",
        )
        assert status == 403 and json.loads(body)["error"]["message"] == "host not allowed"


async def test_a_refusal_of_the_head_as_it_is_read_is_the_same_whatever_the_origin() -> None:
    """docs/protocol.md, Origins and hosts: a 400 for the Host of a request whose target
    is a path (as a browser's is) names the page's origin; the refusals of a request
    as it is read (a malformed line, a body, the Host of one in absolute-form) carry no
    CORS header, nor Vary."""
    origin = b"Origin: " + LOCAL.encode() + b"\r\n"
    target = EVENTS.encode()
    async with run_server() as server:
        for host in (b"", b"Host: a b\r\n"):
            status, headers, _ = await raw_http(
                server, b"GET " + target + b" HTTP/1.1\r\n" + host + origin + b"\r\n"
            )
            assert status == 400 and headers["access-control-allow-origin"] == LOCAL, host
            assert headers["vary"] == "Origin", host
        here = f"Host: 127.0.0.1:{server.port}\r\n".encode()
        absolute = f"GET http://127.0.0.1:{server.port}{EVENTS} HTTP/1.1\r\n".encode()
        for request, refused in (
            (b"GET " + target + b" HTTP/1.1\r\n" + here + origin + b"X y: z\r\n\r\n", 400),
            (
                b"GET " + target + b" HTTP/1.1\r\n" + here + origin + b"Content-Length: 1\r\n\r\nx",
                405,
            ),
            (absolute + origin + b"\r\n", 400),  # no Host
            (absolute + b"Host: a b\r\n" + origin + b"\r\n", 400),
        ):
            status, headers, _ = await raw_http(server, request)
            assert status == refused, request
            assert_no_cors(headers)
            assert "vary" not in headers, request


async def test_with_auth_any_web_origin_reads_with_its_token() -> None:
    async with run_server(auth_secret=SECRET) as server:
        await server.manager.create_session("alice", session_id="s1")
        for origin in (EVIL, "https://app.example:8443", LOCAL):
            assert (await preflight(server, origin))[0] == 204, origin
            status, headers, _ = await answer(
                server, EVENTS, {"Origin": origin, "Authorization": bearer("alice")}
            )
            assert status == 200 and headers["access-control-allow-origin"] == origin
            # Errors too: the page reads why.
            status, headers, body = await answer(server, EVENTS, {"Origin": origin})
            assert status == 401 and headers["access-control-allow-origin"] == origin
            assert json.loads(body)["error"]["code"] == "unauthorized"
            status, headers, _ = await answer(
                server, EVENTS, {"Origin": origin, "Authorization": bearer("bob")}
            )
            assert status == 403 and headers["access-control-allow-origin"] == origin
        # Still never null, nor an origin that is no http(s) origin.
        for origin in ("null", "chrome-extension://abc", "https://app.example/path"):
            status, headers, _ = await answer(
                server, EVENTS, {"Origin": origin, "Authorization": bearer("alice")}
            )
            assert status == 200
            assert_no_cors(headers)
            assert (await preflight(server, origin))[0] == 403, origin


@pytest.mark.parametrize("auth", [False, True])
async def test_with_a_list_only_those_origins_and_loopback_without_auth(auth: bool) -> None:
    overrides: dict[str, Any] = {"allowed_origins": ("https://app.example",)}
    if auth:
        overrides["auth_secret"] = SECRET
    async with run_server(**overrides) as server:
        await server.manager.create_session("u", session_id="s1")
        for origin, allowed in (
            ("https://app.example", True),
            (EVIL, False),
            ("http://app.example", False),
            (LOCAL, True),  # the loopback entries apply on top of a list, as for upgrades
        ):
            request_headers = {"Origin": origin}
            if auth:
                request_headers["Authorization"] = bearer("u")
            status, headers, _ = await answer(server, "/api/v1/sessions/s1", request_headers)
            assert status == 200
            assert headers.get("access-control-allow-origin") == (origin if allowed else None)
            assert (await preflight(server, origin))[0] == (204 if allowed else 403), origin


@pytest.mark.parametrize("auth", [False, True])
async def test_endpoints_that_ask_for_no_token_are_not_served_to_other_origins(
    auth: bool,
) -> None:
    """Under auth any origin may upgrade, and these ask for no token: naming any origin
    on them would let every site a user visits read them from a server only the user's
    browser reaches. So only the session API is named, with auth or without."""
    overrides: dict[str, Any] = {"auth_secret": SECRET} if auth else {}
    async with run_server(**overrides) as server:
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/stats", "/console/"):
            for origin in (LOCAL, EVIL):
                status, headers, _ = await answer(server, path, {"Origin": origin})
                assert "access-control-allow-origin" not in headers, (path, origin, status)
                status, headers, body = await answer(
                    server,
                    path,
                    {"Origin": origin, "Access-Control-Request-Method": "GET"},
                    "OPTIONS",
                )
                assert status == 403, (path, origin)
                assert "access-control-allow-origin" not in headers
                message = json.loads(body)["error"]["message"]
                assert message == "only /api/v1/sessions is served to other origins"


async def test_no_path_or_origin_trick_names_an_origin_on_what_asks_for_no_token() -> None:
    """Paths that look like the session API but are not (or are, and ask for a token),
    and origins that look loopback but are not: no other endpoint is ever named, and
    a path under ``/api/v1/sessions/`` is never routed anywhere else."""
    async with run_server(auth_secret=SECRET) as server:
        for path in (
            "//api/v1/sessions",
            "/api/v1/sessionsX",
            "/api/v1/sessions%2Fs1",
            "/API/v1/sessions",
            "/api/v1/sessions#/x",
            "/metrics?/api/v1/sessions/",
            "/healthz?x=/api/v1/sessions",
        ):
            status, headers, _ = await answer(server, path, {"Origin": EVIL})
            assert "access-control-allow-origin" not in headers, (path, status)
            status, headers = await preflight_of(server, path, EVIL)
            assert status == 403, path
            assert_no_cors(headers)
        # Dot segments are not resolved: these are the session API, and ask for a token.
        for path in (
            "/api/v1/sessions/../metrics",
            "/api/v1/sessions/..%2F..%2Fmetrics",
            "/api/v1/sessions/s1/events/../../../../api/v1/stats",
        ):
            status, headers, body = await answer(server, path, {"Origin": EVIL})
            assert status == 401, path
            assert json.loads(body)["error"]["code"] == "unauthorized"
    async with run_server() as server:
        await server.manager.create_session("u", session_id="s1")
        for origin in (
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://localhost..",
            "http://localhost.evil.example.",
            "http://0.0.0.0",
            "http://localhost@evil.example",
            "http://evil.example@localhost",
            "http://evil.example#@localhost",
            "http://%6cocalhost",
            "http://localhost:5173/",
            "ws://localhost",
        ):
            status, headers, _ = await answer(server, EVENTS, {"Origin": origin})
            assert status == 200, origin
            assert_no_cors(headers)
            assert (await preflight(server, origin))[0] == 403, origin
        # A fully qualified name is the name: http://localhost. is loopback, and named.
        status, headers, _ = await answer(server, EVENTS, {"Origin": "http://localhost."})
        assert status == 200 and headers["access-control-allow-origin"] == "http://localhost."


async def preflight_of(server: Any, path: str, origin: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = await answer(
        server, path, {"Origin": origin, "Access-Control-Request-Method": "GET"}, "OPTIONS"
    )
    return status, headers


@pytest.mark.parametrize("auth", [False, True])
async def test_the_list_of_sessions_is_named_to_other_origins_only_under_auth(auth: bool) -> None:
    """No WebSocket lists the sessions: without auth, where the list holds every user's,
    no other origin may read it (a page reads the sessions whose ids it has). Under auth
    it is read with a token, and holds the token's own sessions only."""
    overrides: dict[str, Any] = {"auth_secret": SECRET} if auth else {}
    async with run_server(**overrides) as server:
        headers_sent = {"Origin": LOCAL}
        if auth:
            headers_sent["Authorization"] = bearer("u")
        for path in ("/api/v1/sessions", "/api/v1/sessions?user_id=u&limit=5"):
            status, headers, _ = await answer(server, path, headers_sent)
            assert status == 200
            assert headers.get("access-control-allow-origin") == (LOCAL if auth else None)
            status, _, _ = await answer(
                server, path, {"Origin": LOCAL, "Access-Control-Request-Method": "GET"}, "OPTIONS"
            )
            assert status == (204 if auth else 403), path


async def test_an_origin_with_a_control_character_is_not_named() -> None:
    """urlsplit drops a tab or a newline without a word: such an Origin (no browser
    sends one) would be echoed as sent."""
    async with run_server() as server:
        await server.manager.create_session("u", session_id="s1")
        status, headers, _ = await answer(server, EVENTS, {"Origin": "http://local\thost"})
        assert status == 200
        assert_no_cors(headers)
