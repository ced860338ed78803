"""CORS for the session API: a page of another origin may read the sessions it could
open a WebSocket to, and nothing else.

Only ``/api/v1/sessions`` and what is under it: a session's metadata, history and
events, which a WebSocket gives too, and, with auth on, only with a token the page's
own code sends. The list of sessions, which no WebSocket gives, only under auth, where
it is read with a token and holds that token's sessions; without auth it holds every
user's. The endpoints that ask for no
token (``/metrics``, ``/api/v1/stats``, ``/readyz``, ``/healthz``, the console) are not
for other origins: under auth any origin may upgrade, and naming any origin there would
let every site a user visits read them from a server only the user's browser reaches (an
intranet's).

The origins are those of the upgrade (``RequestGuard.origin_allowed``, origins.py):
without auth, loopback origins and ``--allowed-origins``; with auth, any origin unless a
list is given. An answer to a request from such an origin (``http://`` or ``https://``
only: never ``null``) names it in ``Access-Control-Allow-Origin``, errors included, so
that the page can read the JSON error (and ``Retry-After`` of a 429 or a 503, exposed);
never ``*``, and never with credentials: the API
reads a token from ``Authorization``, which a browser sends only when the page's own
code sets it, never a cookie. An answer that sets its own (``/client/``: ``*``) is left
alone.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) from
such an origin, for GET or HEAD, gets 204 with the methods and the one header the API
reads (``Authorization``; a fetch's ``Accept`` needs no leave); from another origin,
403. An ``OPTIONS`` that is no preflight is 405, as any other method (http.py).
"""

from __future__ import annotations

import http
import urllib.parse

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .http import SESSIONS_PATH, is_session_api
from .http_requests import ALLOWED_METHODS
from .origins import RequestGuard
from .responses import error_response

ALLOW_HEADERS = "Authorization"
MAX_AGE = "600"  # seconds a browser may keep a preflight's answer (Chromium caps it at 7,200)
_ORIGIN = "Access-Control-Allow-Origin"


def _web_origin(value: str) -> bool:
    """Whether ``value`` is an ``http://`` or ``https://`` origin as a browser sends it:
    a scheme, a host and perhaps a port, nothing else (no path, no user, not ``null``)."""
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is no port
    except ValueError:
        return False
    return (
        value.isascii()
        and value.isprintable()  # urlsplit drops a tab or a newline without a word
        and parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and parts.password is None
        and not parts.path
        and not parts.query
        and not parts.fragment
        and not any(c in value for c in "?#")
    )


def allowed_origin(guard: RequestGuard, request: Request) -> str | None:
    """The request's ``Origin``, to be echoed, if the request is for the session API and
    its origin a web origin the guard allows (not when there are two: that request is
    refused, 400)."""
    if not is_session_api(request.path):
        return None
    if not guard.auth_enabled and request.path.partition("?")[0] == SESSIONS_PATH:
        # The list of every session, which no WebSocket gives: without auth, to the
        # server's own pages only (under auth it is read with a token, and lists its own).
        return None
    origins = request.headers.get_all("Origin")
    if len(origins) != 1:
        return None
    origin = origins[0].strip()
    if not _web_origin(origin) or not guard.origin_allowed(origin):
        return None
    return origin


def is_preflight(request: Request) -> bool:
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def preflight(guard: RequestGuard, request: Request) -> Response:
    """The answer to a preflight (:func:`is_preflight`)."""
    origin = allowed_origin(guard, request)
    if origin is None:
        reason = (
            "origin not allowed"
            if is_session_api(request.path)
            else f"only {SESSIONS_PATH} is served to other origins"
        )
        return error_response(http.HTTPStatus.FORBIDDEN, "forbidden", reason)
    methods = request.headers.get_all("Access-Control-Request-Method")
    if [method.strip() for method in methods] not in (["GET"], ["HEAD"]):
        return error_response(
            http.HTTPStatus.METHOD_NOT_ALLOWED,
            "bad_request",
            f"only {ALLOWED_METHODS} are served here",
            {"Allow": ALLOWED_METHODS},
        )
    headers = Headers(
        [
            ("Access-Control-Allow-Methods", ALLOWED_METHODS),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Max-Age", MAX_AGE),
            ("Cache-Control", "no-store"),
        ]
    )
    status = http.HTTPStatus.NO_CONTENT
    return Response(status.value, status.phrase, headers, b"")


def with_cors(guard: RequestGuard, request: Request, response: Response) -> Response:
    """``response`` naming the request's origin if it is allowed (see the module
    docstring), with ``Vary: Origin`` whatever the origin; unchanged if it sets
    ``Access-Control-Allow-Origin`` itself."""
    headers = response.headers
    if _ORIGIN in headers:
        return response
    origin = allowed_origin(guard, request)
    if origin is not None:
        headers[_ORIGIN] = origin
        if "Retry-After" in headers:
            # Not a header a page may read unless named: a 429 or a 503 says when to
            # ask again, and the page's code should be able to honour it.
            headers["Access-Control-Expose-Headers"] = "Retry-After"
    vary = headers.get("Vary")
    if vary is None:
        headers["Vary"] = "Origin"
    elif "origin" not in vary.lower():
        del headers["Vary"]
        headers["Vary"] = f"{vary}, Origin"
    return response
