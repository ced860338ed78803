"""HTTP on the WebSocket port: routing of upgrades, and the GET endpoints.

``/healthz``, ``/readyz``, ``/metrics`` (and its figures as JSON, ``/api/v1/stats``), the
read-only JSON API of PROTOCOL.md, and the browser side (``web.py``: ``/client/``,
``/console``). A request for the stream endpoint is checked here (path, session id)
before the upgrade; anything else is answered here and never reaches a WebSocket handler.
"""

from __future__ import annotations

import http
import urllib.parse
from typing import TYPE_CHECKING, Any

import msgspec
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bamboo_session.persistence.base import SessionExpired, SessionFilter, StorageError
from bamboo_session.protocol.frames import EventRecord
from bamboo_session.protocol.ids import is_valid_session_id

from . import web
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

if TYPE_CHECKING:
    from .app import BambooServer

STREAM_PATH = "/api/v1/stream"
SESSIONS_PATH = "/api/v1/sessions"
STATS_PATH = "/api/v1/stats"
_json = msgspec.json.Encoder()


class Route(msgspec.Struct, frozen=True):
    """Where an upgrade request goes: a session id, or None for a new session."""

    session_id: str | None


class BadRoute(Exception):
    def __init__(self, status: http.HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def stream_route(raw_path: str) -> Route:
    """The route of a stream request's path, or BadRoute (400 bad id, 404 elsewhere)."""
    path = raw_path.partition("?")[0]
    if path == STREAM_PATH:
        return Route(None)
    if path.startswith(STREAM_PATH + "/"):
        session_id = urllib.parse.unquote(path[len(STREAM_PATH) + 1 :])
        if not is_valid_session_id(session_id):
            raise BadRoute(http.HTTPStatus.BAD_REQUEST, "invalid session id")
        return Route(session_id)
    raise BadRoute(http.HTTPStatus.NOT_FOUND, "no such endpoint")


def is_upgrade(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def text_response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def json_response(status: http.HTTPStatus, payload: Any) -> Response:
    return text_response(status, _json.encode(payload), "application/json")


def error_response(status: http.HTTPStatus, code: str, message: str) -> Response:
    return json_response(status, {"error": {"code": code, "message": message}})


async def handle_get(server: BambooServer, request: Request) -> Response:
    """The answer to a plain HTTP request (not an upgrade): GET only."""
    if request.method != "GET":
        response = error_response(
            http.HTTPStatus.METHOD_NOT_ALLOWED, "bad_request", "only GET is served here"
        )
        response.headers["Allow"] = "GET"
        return response
    path, _, query = request.path.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=False))
    try:
        if path == "/healthz":
            return text_response(http.HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":
            ready = server.ready
            status = http.HTTPStatus.OK if ready else http.HTTPStatus.SERVICE_UNAVAILABLE
            return text_response(status, b"ready\n" if ready else b"not ready\n", "text/plain")
        if path == "/metrics":
            body = server.metrics.render()
            return text_response(http.HTTPStatus.OK, body, METRICS_CONTENT_TYPE)
        if path == STATS_PATH:
            return json_response(http.HTTPStatus.OK, server.metrics.figures())
        if web.is_web_path(path):
            return web.serve(request, path)
        if path == SESSIONS_PATH:
            return await _list_sessions(server, request, params)
        if path.startswith(SESSIONS_PATH + "/"):
            return await _session_resource(server, request, path[len(SESSIONS_PATH) + 1 :], params)
    except StorageError as exc:
        return error_response(http.HTTPStatus.SERVICE_UNAVAILABLE, "internal", str(exc))
    return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such endpoint")


async def _list_sessions(
    server: BambooServer, request: Request, params: dict[str, str]
) -> Response:
    unauthenticated = server.authorize_session(request, None)  # 401 before anything else
    if unauthenticated is not None:
        return unauthenticated
    try:
        filter = msgspec.convert(params, SessionFilter, strict=False)
    except msgspec.ValidationError as exc:
        return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
    if not 0 < filter.limit <= server.config.max_list_page or filter.offset < 0:
        message = f"limit must be 1..{server.config.max_list_page}, offset >= 0"
        return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", message)
    refusal, filter = server.authorize_listing(request, filter)
    if refusal is not None:
        return refusal
    return json_response(http.HTTPStatus.OK, await server.manager.list_sessions(filter))


async def _session_resource(
    server: BambooServer, request: Request, rest: str, params: dict[str, str]
) -> Response:
    unauthenticated = server.authorize_session(request, None)  # 401 before anything else
    if unauthenticated is not None:
        return unauthenticated
    session_id, _, tail = (urllib.parse.unquote(part) for part in rest.partition("/"))
    if not is_valid_session_id(session_id) or tail not in ("", "events"):
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such endpoint")
    manager = server.manager
    metadata = await manager.get_metadata(session_id)
    if metadata is not None and metadata.is_expired():
        metadata = None
    # Authentication comes first (401 even for a missing session), then 404, then 403.
    refusal = server.authorize_session(request, metadata)
    if refusal is not None:
        return refusal
    if metadata is None:
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "session not found")
    if tail == "events":
        return await _events(server, session_id, params)
    try:
        messages = await manager.get_session_history(session_id)
    except SessionExpired:
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "session not found")
    return json_response(http.HTTPStatus.OK, {"metadata": metadata, "messages": messages})


async def _events(server: BambooServer, session_id: str, params: dict[str, str]) -> Response:
    try:
        after_seq = int(params.get("after_seq", "0"))
        limit = int(params.get("limit", "1000"))
    except ValueError:
        return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", "integers expected")
    if after_seq < 0 or limit < 1:
        return error_response(
            http.HTTPStatus.BAD_REQUEST, "bad_request", "after_seq >= 0, limit >= 1"
        )
    actor = server.manager.live_actor(session_id)
    stored = await server.manager.read_events(
        session_id, after_seq, min(limit, server.config.max_events_page)
    )
    # A live session's in-flight appends are not acknowledged yet: never show them.
    through = actor.published_seq if actor is not None else None
    records = [
        EventRecord(e.seq, e.ts, e.event) for e in stored if through is None or e.seq <= through
    ]
    last_seq = through if through is not None else await server.manager.storage.last_seq(session_id)
    return json_response(http.HTTPStatus.OK, {"events": records, "last_seq": last_seq})
