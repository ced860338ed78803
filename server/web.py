"""The browser side, served on the WebSocket port: the JavaScript client and the console.

The files live in ``server/web/`` (package data, so they ship in the wheel) and are
served from memory, read once:

- ``/client/<file>``: the JavaScript client, dependency-free ES modules: ``bamboo.js``,
  the entry, and the modules it imports by relative URL. Pages on other origins may
  import it, so every one of them is served with ``Access-Control-Allow-Origin: *``.
- ``/console`` and ``/console/<file>``: the web console (``console/index.html`` and its
  ES modules and stylesheet), under a strict Content-Security-Policy: scripts and styles
  from this origin only, no inline code, no ``innerHTML``-style sinks (Trusted Types).
- ``/``: a redirect to ``/console``.

Only files present in the folder are served, looked up by exact name: a request path
never reaches the file system. Responses carry an ``ETag`` and ``Cache-Control:
no-cache``, so browsers revalidate and get ``304`` while the file is unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import http
import re
from pathlib import Path

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .responses import error_response

WEB_DIR = Path(__file__).resolve().parent / "web"
CONSOLE_PATH = "/console"
CLIENT_PREFIX = "/client/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# A Host header fit to appear in the CSP: a host name or address, and a port.
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


class Asset(msgspec.Struct, frozen=True):
    body: bytes
    content_type: str
    etag: str


@functools.cache
def assets() -> dict[str, Asset]:
    """Every servable file by its URL path, read once."""
    found: dict[str, Asset] = {}
    for folder, prefix in (("client", CLIENT_PREFIX), ("console", CONSOLE_PATH + "/")):
        for path in sorted((WEB_DIR / folder).iterdir()):
            content_type = CONTENT_TYPES.get(path.suffix)
            if content_type is None or not path.is_file():
                continue
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            found[prefix + path.name] = Asset(body, content_type, etag)
    index = found.pop(CONSOLE_PATH + "/index.html", None)
    if index is not None:
        found[CONSOLE_PATH] = index
    return found


def is_web_path(path: str) -> bool:
    return path in ("/", CONSOLE_PATH) or path.startswith((CONSOLE_PATH + "/", CLIENT_PREFIX))


def serve(request: Request, path: str) -> Response:
    """The response to a GET of a web path (see :func:`is_web_path`)."""
    if path == "/" or path == CONSOLE_PATH + "/":
        return _redirect(CONSOLE_PATH)
    asset = assets().get(path)
    if asset is None:
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such file")
    headers = _headers(request, path, asset)
    if _matches(request.headers.get_all("If-None-Match"), asset.etag):
        return Response(304, "Not Modified", headers, b"")
    headers["Content-Type"] = asset.content_type
    headers["Content-Length"] = str(len(asset.body))
    return Response(200, "OK", headers, asset.body)


def _matches(if_none_match: list[str], etag: str) -> bool:
    """Whether an If-None-Match header (every line of it) names ``etag``: RFC 9110
    13.1.2, a list matches if any tag does, by the weak comparison (``W/"x"`` is
    ``"x"``), and ``*`` matches any asset. A browser revalidating with several stored
    tags, or behind a proxy that weakened ours when it compressed, gets its 304."""
    for line in if_none_match:
        for tag in line.split(","):
            tag = tag.strip()
            if tag == "*" or tag.removeprefix("W/") == etag:
                return True
    return False


def content_security_policy(host: str | None) -> str:
    """The console's policy. ``connect-src`` names this host's ws:/wss: origins too,
    since not every browser reads ``'self'`` as covering WebSocket URLs."""
    connect = "'self'"
    if host is not None and _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "require-trusted-types-for 'script'",
            "trusted-types 'none'",
        ]
    )


def _headers(request: Request, path: str, asset: Asset) -> Headers:
    headers = Headers(
        [
            ("ETag", asset.etag),
            ("Cache-Control", "no-cache"),
            ("Referrer-Policy", "no-referrer"),
        ]
    )
    if path.startswith(CLIENT_PREFIX):
        headers["Access-Control-Allow-Origin"] = "*"
        headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    else:
        headers["Content-Security-Policy"] = content_security_policy(request.headers.get("Host"))
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        headers["X-Frame-Options"] = "DENY"
    return headers


def _redirect(location: str) -> Response:
    response = _response(http.HTTPStatus.FOUND, b"", "text/plain; charset=utf-8")
    response.headers["Location"] = location
    return response


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
