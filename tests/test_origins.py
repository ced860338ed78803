"""Safe defaults for Origin and Host: without auth, a web page the developer visits can
neither open a WebSocket to their local server (cross-site WebSocket hijacking) nor read
its HTTP API by rebinding its own name to 127.0.0.1 (DNS rebinding)."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bamboo_session.server.origins import RequestGuard
from tests.http_support import error_of, raw_http
from tests.support import get, open_peer, run_server

SECRET = "o" * 32


def test_without_auth_only_loopback_hosts_and_origins_pass() -> None:
    guard = RequestGuard("127.0.0.1", auth_enabled=False)
    for host in (
        None,
        "127.0.0.1:8765",
        "localhost",
        "LOCALHOST:80",
        "[::1]:8765",
        "app.localhost",
    ):
        assert guard.host_allowed(host), host
    for host in ("evil.example", "evil.example:8765", "10.0.0.5:8765", "127.0.0.1.evil.example"):
        assert not guard.host_allowed(host), host
    for origin in (None, "http://localhost:3000", "http://127.0.0.1:8765", "https://[::1]"):
        assert guard.origin_allowed(origin), origin
    for origin in ("https://evil.example", "null", "http://localhost.evil.example", "file://"):
        assert not guard.origin_allowed(origin), origin
    for origin in ("http://[::1", "http://[localhost]"):  # urlsplit raises ValueError
        assert not guard.origin_allowed(origin), origin


def test_a_trailing_dot_names_the_same_host_and_nothing_more() -> None:
    guard = RequestGuard(
        "192.168.1.5",
        auth_enabled=False,
        allowed_origins=("https://app.example.",),
        allowed_hosts=("bamboo.internal.", "proxy.example:8443"),
    )
    for host in (
        "localhost.",
        "LOCALHOST.:80",
        "app.localhost.",  # as app.localhost: any name under localhost is loopback
        "127.0.0.1.:8765",
        "192.168.1.5.:8765",
        "bamboo.internal",
        "bamboo.internal.:8765",
        "proxy.example.:8443",
    ):
        assert guard.host_allowed(host), host
    for host in (
        "localhost..",
        "localhost..:8765",
        ".",
        ".:8765",
        "evil.example.",
        "localhost.evil.example.",
        "192.168.1.6.:8765",
        "proxy.example.:9999",
    ):
        assert not guard.host_allowed(host), host
    for origin in ("http://localhost.:3000", "https://app.localhost./", "https://app.example"):
        assert guard.origin_allowed(origin), origin
    assert guard.origin_allowed("https://APP.example.")
    for origin in (
        "http://localhost..:3000",
        "http://evil.example.",
        "http://localhost.evil.example.",
    ):
        assert not guard.origin_allowed(origin), origin
    named = RequestGuard("bamboo.lan.", auth_enabled=False)
    assert named.host_allowed("bamboo.lan:8765") and named.host_allowed("bamboo.lan.")
    assert not named.host_allowed("bamboo.lan..")


def test_the_flags_widen_the_lists() -> None:
    guard = RequestGuard(
        "127.0.0.1",
        auth_enabled=False,
        allowed_origins=("https://App.example/",),
        allowed_hosts=("bamboo.internal", "proxy.example:8443"),
    )
    assert guard.origin_allowed("https://app.example")
    assert guard.origin_allowed("http://localhost:5173")  # still
    assert not guard.origin_allowed("https://other.example")
    assert guard.host_allowed("bamboo.internal:8765") and guard.host_allowed("proxy.example:8443")
    assert guard.host_allowed("localhost")
    assert not guard.host_allowed("proxy.example:9999") and not guard.host_allowed("evil.example")
    anything = RequestGuard("127.0.0.1", False, allowed_origins=("*",), allowed_hosts=("*",))
    assert anything.origin_allowed("https://evil.example") and anything.host_allowed("x.example")


def test_the_bound_address_passes_and_any_ip_when_bound_everywhere() -> None:
    lan = RequestGuard("192.168.1.5", auth_enabled=False)
    assert lan.host_allowed("192.168.1.5:8765") and not lan.host_allowed("192.168.1.6:8765")
    everywhere = RequestGuard("0.0.0.0", auth_enabled=False)
    assert everywhere.host_allowed("192.168.1.5:8765") and everywhere.host_allowed("[fe80::1]")
    assert not everywhere.host_allowed("rebound.evil.example:8765")


def test_a_guard_that_has_judged_many_hosts_judges_each_as_a_new_one_would() -> None:
    # Its verdicts are kept for a few Host values (origins.HOST_VERDICTS): asked of many
    # more, twice over, it answers each as a guard that has judged nothing yet.
    guard = RequestGuard("127.0.0.1", auth_enabled=False)
    hosts = [f"127.0.0.{i}:8765" for i in range(1, 100)] + [f"h{i}.example" for i in range(100)]
    for _ in range(2):
        for host in hosts:
            fresh = RequestGuard("127.0.0.1", auth_enabled=False)
            assert guard.host_allowed(host) is fresh.host_allowed(host), host
            assert guard.host_allowed(host) is host.startswith("127."), host


def test_with_auth_any_host_and_origin_pass_unless_listed() -> None:
    open_guard = RequestGuard("0.0.0.0", auth_enabled=True)
    assert open_guard.host_allowed("bamboo.example.com")
    assert open_guard.origin_allowed("https://app.example.com")
    listed = RequestGuard("0.0.0.0", True, allowed_origins=("https://app.example.com",))
    assert listed.origin_allowed("https://app.example.com")
    assert not listed.origin_allowed("https://evil.example")


async def upgrade_status(server: Any, headers: dict[str, str]) -> int:
    try:
        async with open_peer(server, headers=headers) as peer:
            await peer.send({"type": "hello"})
            assert (await peer.recv())["type"] == "welcome"
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_by_default_a_foreign_origin_cannot_open_a_websocket() -> None:
    async with run_server() as server:
        assert await upgrade_status(server, {"Origin": "https://evil.example"}) == 403
        assert await upgrade_status(server, {"Origin": "null"}) == 403
        # A bracketed host urlsplit cannot read: refused like any foreign origin (it
        # was a 500 with a traceback in the log).
        assert await upgrade_status(server, {"Origin": "http://[::1"}) == 403
        assert await upgrade_status(server, {"Origin": "http://localhost:3000"}) == 101
        assert await upgrade_status(server, {}) == 101  # not a browser
    async with run_server(allowed_origins=("https://app.example",)) as server:
        assert await upgrade_status(server, {"Origin": "https://app.example"}) == 101
        assert await upgrade_status(server, {"Origin": "https://evil.example"}) == 403


async def test_by_default_a_rebound_host_reads_nothing() -> None:
    async with run_server() as server:
        await server.manager.create_session("u", "secret plans")
        for path in ("/api/v1/sessions", "/healthz", "/metrics"):
            status, body = await get(server, path, {"Host": "rebound.evil.example:8765"})
            assert status == 403 and body["error"] == {
                "code": "forbidden",
                "message": "host not allowed",
            }, path
        assert (await get(server, "/api/v1/sessions", {"Host": "localhost"}))[0] == 200
        upgrade = (
            b"GET /api/v1/stream HTTP/1.1\r\nHost: rebound.evil.example\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert (await raw_http(server, upgrade))[0] == 403
    async with run_server(allowed_hosts=("bamboo.internal",)) as server:
        assert (await get(server, "/healthz", {"Host": "bamboo.internal:80"}))[0] == 200


async def upgrade_status_as(server: Any, host: str, origin: str | None = None) -> int:
    """An upgrade whose Host header is ``host`` (with the port), sent to 127.0.0.1."""
    headers = {"Origin": origin} if origin is not None else None
    url = f"ws://{host}:{server.port}/api/v1/stream"
    try:
        async with connect(
            url, host="127.0.0.1", additional_headers=headers, proxy=None, open_timeout=5
        ) as ws:
            await ws.send('{"type": "hello"}')
            assert '"welcome"' in str(await ws.recv())
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def test_a_fully_qualified_loopback_name_is_served_as_its_name() -> None:
    async with run_server() as server:
        for host in ("localhost.", "localhost.:8765"):
            assert (await get(server, "/api/v1/sessions", {"Host": host}))[0] == 200, host
        for host in ("localhost..", "evil.example."):
            status, body = await get(server, "/api/v1/sessions", {"Host": host})
            assert status == 403 and body["error"]["message"] == "host not allowed", host
        assert await upgrade_status_as(server, "localhost.") == 101
        assert await upgrade_status_as(server, "localhost.", "http://localhost.:3000") == 101
        assert await upgrade_status_as(server, "localhost..") == 403
        assert await upgrade_status_as(server, "localhost", "http://localhost..:3000") == 403


UPGRADE_HEAD = (
    b"GET /api/v1/stream HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)
TWICE = {
    "Host": b"Host: localhost\r\nHost: evil.example\r\n",
    "Origin": b"Host: localhost\r\nOrigin: http://localhost\r\nOrigin: http://localhost\r\n",
    "Authorization": b"Host: localhost\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n",
    "Upgrade": b"Host: localhost\r\nUpgrade: websocket\r\nUpgrade: websocket\r\n",
}


@pytest.mark.parametrize("auth", [False, True], ids=["auth-off", "auth-on"])
async def test_a_second_host_origin_authorization_or_upgrade_header_is_a_bad_request(
    auth: bool,
) -> None:
    # docs/protocol.md, "Origins and hosts": with auth on or off, on any request.
    async with run_server(auth_secret=SECRET if auth else None) as server:
        for name, headers in TWICE.items():
            upgrade = UPGRADE_HEAD + (b"" if name == "Upgrade" else b"Upgrade: websocket\r\n")
            for head in (
                b"GET /healthz HTTP/1.1\r\n",
                b"GET /api/v1/sessions HTTP/1.1\r\n",
                upgrade,
            ):
                status, answer, body = await raw_http(server, head + headers + b"\r\n")
                refused = (status, error_of(answer, body)["message"])
                assert refused == (400, f"more than one {name} header"), (name, head)
        if not auth:
            assert await upgrade_status(server, {"Origin": "http://localhost"}) == 101
            assert await upgrade_status(server, {"Host": "localhost"}) == 400  # plus its own


async def test_with_auth_hosts_and_origins_are_not_restricted_by_default() -> None:
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, SECRET, "HS256")
    async with run_server(auth_secret=SECRET) as server:
        status, _ = await get(server, "/healthz", {"Host": "bamboo.example.com"})
        assert status == 200
        async with open_peer(server, headers={"Origin": "https://app.example.com"}) as peer:
            await peer.send({"type": "hello", "token": token})
            assert (await peer.recv())["type"] == "welcome"


@pytest.mark.parametrize("value", ["", " , "])
def test_empty_lists_are_no_lists(value: str) -> None:
    guard = RequestGuard("127.0.0.1", False, allowed_hosts=tuple(value.split(",")))
    assert not guard.host_allowed("evil.example")
