"""The browser side over plain HTTP (server/web.py): what is served, with which headers,
what is refused; the ``/api/v1/stats`` figures; and that the assets ship as package data.
What the pages do is tested in a real browser (tests/test_browser_*.py)."""

from __future__ import annotations

import asyncio
import fnmatch
import http.client
import json
import re
import tomllib
from pathlib import Path

import pytest

from bamboo_session.protocol.client import BambooClient
from bamboo_session.server.app import BambooServer
from bamboo_session.server.web import CLIENT_PREFIX, WEB_DIR, assets
from tests.support import CLIENT_DIR, client_modules, run_server, token

ROOT = Path(__file__).resolve().parent.parent


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _fetch(port: int, path: str, headers: dict[str, str]) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        found = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, found, response.read())
    finally:
        connection.close()


async def fetch(server: BambooServer, path: str, **headers: str) -> Reply:
    """A GET that does not follow redirects, with the response's headers."""
    return await asyncio.to_thread(_fetch, server.port, path, headers)


async def test_root_redirects_to_the_console() -> None:
    async with run_server() as server:
        for path in ("/", "/console/"):
            reply = await fetch(server, path)
            assert reply.status == 302
            assert reply.headers["location"] == "/console"


async def test_console_is_served_under_a_strict_policy() -> None:
    async with run_server() as server:
        reply = await fetch(server, "/console", Host=f"127.0.0.1:{server.port}")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/html; charset=utf-8"
        assert reply.headers["x-content-type-options"] == "nosniff"
        directives = reply.headers["content-security-policy"].split(";")
        policy = dict(part.strip().split(" ", 1) for part in directives)
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'"
        assert policy["style-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
        assert policy["require-trusted-types-for"] == "'script'"
        host = f"127.0.0.1:{server.port}"
        assert policy["connect-src"] == f"'self' ws://{host} wss://{host}"
        assert "unsafe" not in reply.headers["content-security-policy"]
        assert b"<script>" not in reply.body and b" style=" not in reply.body


async def test_a_hostile_host_header_never_reaches_the_policy() -> None:
    # Hosts outside --allowed-hosts are refused before any page (403); an allowed one
    # that is not a plain host name must still not be written into the policy: one a
    # host name cannot be (a space) is refused first (400), one of characters RFC 3986
    # allows in a name (;=*) is served, with a policy that does not name it.
    hostile = "evil.example; script-src *"
    async with run_server(allowed_hosts=(hostile,)) as server:
        assert (await fetch(server, "/console", Host=hostile)).status == 400
    legal_but_hostile = "evil.example;script-src=*"
    async with run_server(allowed_hosts=(legal_but_hostile,)) as server:
        reply = await fetch(server, "/console", Host=legal_but_hostile)
        assert reply.status == 200
        policy = reply.headers["content-security-policy"]
        assert "evil" not in policy
        assert "connect-src 'self';" in policy
    async with run_server() as server:
        refused = await fetch(server, "/console", Host="evil.example")
        assert refused.status == 403


async def test_every_page_reference_and_module_import_resolves() -> None:
    """index.html's scripts and styles, and every static import of every module."""
    async with run_server() as server:
        index = (await fetch(server, "/console")).body.decode()
        wanted = set(re.findall(r'(?:src|href)="(/[^"]+)"', index))
        for module in (WEB_DIR / "console").glob("*.js"):
            for target in re.findall(r'from "([^"]+)"', module.read_text()):
                wanted.add(target if target.startswith("/") else f"/console/{target[2:]}")
        assert "/client/bamboo.js" in wanted and "/console/app.js" in wanted
        for path in sorted(wanted):
            reply = await fetch(server, path)
            assert reply.status == 200, path
            suffix = Path(path).suffix
            expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
            assert reply.headers["content-type"].startswith(expected[suffix]), path


async def test_client_module_may_be_imported_from_any_origin() -> None:
    async with run_server() as server:
        reply = await fetch(server, "/client/bamboo.js", Origin="https://app.example")
        assert reply.status == 200
        assert reply.headers["content-type"] == "text/javascript; charset=utf-8"
        assert reply.headers["access-control-allow-origin"] == "*"
        assert b"export { BambooClient }" in reply.body  # from its sibling client.js


async def test_every_module_of_the_client_is_served_as_its_entry_is() -> None:
    """bamboo.js imports its sibling modules by relative URL, so a page that imports it,
    from any origin, loads each of them from /client/ too: each is served as the entry
    is (JavaScript, ``Access-Control-Allow-Origin: *``, a cross-origin resource policy,
    ``no-cache`` with an ETag that revalidates, and no console policy), and the folder
    serves its JavaScript only (its package.json is for Node)."""
    modules = client_modules()
    assert {"bamboo.js", "client.js", "errors.js"} <= modules
    served = {path for path in assets() if path.startswith(CLIENT_PREFIX)}
    assert served == {CLIENT_PREFIX + path.name for path in CLIENT_DIR.glob("*.js")}
    assert {CLIENT_PREFIX + name for name in modules} <= served
    alike = (
        "content-type",
        "access-control-allow-origin",
        "cross-origin-resource-policy",
        "cache-control",
        "x-content-type-options",
        "referrer-policy",
        "content-security-policy",
    )
    async with run_server() as server:
        origin = "https://app.example"
        entry = await fetch(server, "/client/bamboo.js", Origin=origin)
        assert entry.headers["access-control-allow-origin"] == "*"
        for name in sorted(modules):
            reply = await fetch(server, CLIENT_PREFIX + name, Origin=origin)
            assert reply.status == 200, name
            assert reply.body == (CLIENT_DIR / name).read_bytes(), name
            for header in alike:
                assert reply.headers.get(header) == entry.headers.get(header), (name, header)
            again = await fetch(
                server, CLIENT_PREFIX + name, **{"If-None-Match": reply.headers["etag"]}
            )
            assert again.status == 304, name
        assert (await fetch(server, "/client/package.json")).status == 404


async def test_unchanged_assets_revalidate_with_304() -> None:
    async with run_server() as server:
        first = await fetch(server, "/console/app.js")
        etag = first.headers["etag"]
        assert first.headers["cache-control"] == "no-cache"
        again = await fetch(server, "/console/app.js", **{"If-None-Match": etag})
        assert again.status == 304 and again.body == b""
        stale = await fetch(server, "/console/app.js", **{"If-None-Match": '"other"'})
        assert stale.status == 200 and stale.body == first.body
        # RFC 9110 13.1.2: any tag of a list, a weakened tag (a compressing proxy's), *
        for form in (f'"other", {etag}', f"W/{etag}", "*"):
            matching = await fetch(server, "/console/app.js", **{"If-None-Match": form})
            assert matching.status == 304 and matching.body == b"", form
        weak_other = await fetch(server, "/console/app.js", **{"If-None-Match": 'W/"other"'})
        assert weak_other.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/console/nope.js",
        "/console/../web.py",
        "/console/%2e%2e/web.py",
        "/client/../web.py",
        "/client/",
        "/console/index.html",  # served as /console only
        "/consoles",
    ],
)
async def test_only_files_of_the_web_folder_are_served(path: str) -> None:
    async with run_server() as server:
        reply = await fetch(server, path)
        assert reply.status == 404, path
        assert b"import" not in reply.body


async def test_stats_count_connections_sessions_and_events() -> None:
    async with run_server() as server:
        url = f"ws://127.0.0.1:{server.port}"
        before = await _stats(server)
        assert before["connections"] == 0 and before["events_appended"] == 0
        async with await BambooClient.connect(url, "s1", create=True) as client:
            for i in range(3):
                await client.publish(token(str(i)))  # type: ignore[arg-type]
            during = await _stats(server)
            assert during["connections"] == 1
            assert during["sessions_live"] == 1
            assert during["events_appended"] == 3
            assert during["time"] >= before["time"]
        for _ in range(100):  # the server sees the close a moment later
            after = await _stats(server)
            if after["connections"] == 0:
                break
            await asyncio.sleep(0.05)
        assert after["connections"] == 0
        assert after["sessions_parked"] == 1


async def test_stats_need_no_token_like_metrics() -> None:
    async with run_server(auth_secret="s" * 32) as server:
        reply = await fetch(server, "/api/v1/stats")
        assert reply.status == 200
        assert (await fetch(server, "/api/v1/sessions")).status == 401


async def _stats(server: BambooServer) -> dict[str, float]:
    reply = await fetch(server, "/api/v1/stats")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    figures: dict[str, float] = json.loads(reply.body)
    return figures


def test_console_code_uses_no_html_string_sinks() -> None:
    """The console builds the page from text nodes only (Trusted Types enforces it in
    the browser; this catches it before)."""
    sinks = re.compile(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(")
    for path in [*(WEB_DIR / "console").iterdir(), *(WEB_DIR / "client").iterdir()]:
        assert not sinks.search(path.read_text()), path


def test_every_web_file_ships_as_package_data() -> None:
    """pyproject's package-data globs cover every file the server serves."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["bamboo_session.server"]
    files = [p.relative_to(WEB_DIR.parent).as_posix() for p in WEB_DIR.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in globs), name
