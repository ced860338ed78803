"""HTTP on the WebSocket port: routing of upgrades, and the GET endpoints.

``/healthz``, ``/readyz``, ``/metrics`` (and its figures as JSON, ``/api/v1/stats``), the
read-only JSON API of docs/protocol.md, and the browser side (``web.py``: ``/client/``,
``/console``). A request for the stream endpoint is checked here (path, session id)
before the upgrade; anything else is answered here and never reaches a WebSocket handler.
"""

from __future__ import annotations

import functools
import http
import urllib.parse
from datetime import datetime

import msgspec
from websockets.http11 import Request, Response

from bamboo_session.persistence.base import SessionFilter, StorageError
from bamboo_session.protocol.frames import EventRecord
from bamboo_session.protocol.ids import is_valid_session_id
from bamboo_session.protocol.leap_seconds import time_read
from bamboo_session.protocol.models import SessionMetadata

from . import web
from .auth import Forbidden, Unauthorized, check_session_id_for
from .failures import failure_of
from .http_pages import as_page, charge_examined, paced, refused_before_read
from .http_peer import HttpPeer
from .http_requests import ALLOWED_METHODS
from .list_cursor import BadCursor, ListingPage, cursor_after, position_of
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .pages import history_page, page_and_last_seq, within_bytes
from .responses import error_response, json_response, text_response
from .services import Services
from .upgrade_lists import elements
from .whole_history import whole_history_response

STREAM_PATH = "/api/v1/stream"
SESSIONS_PATH = "/api/v1/sessions"


def is_session_api(path: str) -> bool:
    """Whether ``path`` (its query included) is ``/api/v1/sessions`` or under it."""
    path = path.partition("?")[0]
    return path == SESSIONS_PATH or path.startswith(SESSIONS_PATH + "/")


STATS_PATH = "/api/v1/stats"
DEFAULT_HISTORY_PAGE = 100  # messages of GET /api/v1/sessions/{id}?before=… without a limit
_TIME_PARAMETERS = ("created_after", "created_before", "active_after")


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


def is_stream_path(raw_path: str) -> bool:
    path = raw_path.partition("?")[0]
    return path == STREAM_PATH or path.startswith(STREAM_PATH + "/")


def is_upgrade(request: Request) -> bool:
    return opens_websocket(request, request.headers.get("Upgrade"))


def opens_websocket(request: Request, upgrade: str | None) -> bool:
    """Whether ``request``, whose ``Upgrade`` is ``upgrade``, is taken for a WebSocket
    upgrade: its ``Upgrade`` list names the ``websocket`` protocol among its elements
    (upgrade_lists.py; ``notwebsocket`` or ``websocketx`` names another, and such a
    request is answered as one without Upgrade). On a stream path, any such: websockets'
    handshake checks the rest, and refuses in its words (405, 426, 505). Elsewhere only
    an opening handshake, a GET in HTTP/1.1 whose Connection names ``upgrade`` too, is
    one (404: no WebSocket there); any other request's Upgrade is ignored, as RFC 9110
    7.8 has a server do in HTTP/1.0 and lets it do otherwise: /healthz answered it 404,
    a POST 404 rather than 405."""
    # The substring first: most requests have no Upgrade, or a plain ``websocket``.
    if upgrade is None or "websocket" not in upgrade.lower():
        return False
    if "websocket" not in elements([upgrade]):
        return False
    if is_stream_path(request.path):
        return True
    return (
        request.method == "GET"
        and request.protocol == "HTTP/1.1"
        and "upgrade" in elements(request.headers.get_all("Connection"))
    )


def failure_response(exc: BaseException) -> Response:
    """The JSON error answer to ``exc``, as server/failures.py maps it."""
    failure = failure_of(exc)
    challenge = {"WWW-Authenticate": 'Bearer realm="bamboo"'}
    headers = challenge if isinstance(exc, Unauthorized) else None
    return error_response(failure.status, failure.error.value, failure.message(exc), headers)


async def handle_get(services: Services, request: Request, peer: HttpPeer) -> Response:
    """The answer to a plain HTTP request (not an upgrade): GET, and HEAD (the same
    answer without its body). ``peer``: who asks (its token verified at most once),
    whose read allowance the session API's pages are charged to (server/http_pages.py)."""
    if request.method not in ("GET", "HEAD"):
        return error_response(
            http.HTTPStatus.METHOD_NOT_ALLOWED,
            "bad_request",
            f"only {ALLOWED_METHODS} are served here",
            {"Allow": ALLOWED_METHODS},
        )
    # A HEAD gets the GET's answer; the server drops its body (request_gate.py), for all.
    return await _answer_get(services, request, peer)


def upgrade_required() -> Response:
    """A plain request to a stream endpoint: it is a WebSocket, not a page."""
    # A sender of Upgrade names it in Connection too (RFC 9110 7.8), and this
    # connection closes after the answer, as every plain answer's does.
    return error_response(
        http.HTTPStatus.UPGRADE_REQUIRED,
        "bad_request",
        "this is a WebSocket endpoint: open it with a WebSocket client",
        {"Upgrade": "websocket", "Connection": "upgrade, close"},
    )


async def _answer_get(services: Services, request: Request, peer: HttpPeer) -> Response:
    path, _, query = request.path.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=False))
    try:
        if path == "/healthz":
            return text_response(http.HTTPStatus.OK, b"ok\n", "text/plain")
        if path == "/readyz":
            reason = await services.readiness.reason()
            if reason is None:
                return text_response(http.HTTPStatus.OK, b"ready\n", "text/plain")
            body = f"not ready: {reason}\n".encode()
            return text_response(http.HTTPStatus.SERVICE_UNAVAILABLE, body, "text/plain")
        if path == "/metrics":
            await services.store_stats.refresh()
            body = services.metrics.render()
            return text_response(http.HTTPStatus.OK, body, METRICS_CONTENT_TYPE)
        if path == STATS_PATH:
            return json_response(http.HTTPStatus.OK, services.metrics.figures())
        if web.is_web_path(path):
            return web.serve(request, path)
        if path == SESSIONS_PATH:
            return await _list_sessions(services, params, peer)
        if path.startswith(SESSIONS_PATH + "/"):
            rest = path[len(SESSIONS_PATH) + 1 :]
            return await _session_resource(services, rest, params, peer)
    except (StorageError, Unauthorized, Forbidden) as exc:
        return failure_response(exc)
    return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such endpoint")


async def _list_sessions(services: Services, params: dict[str, str], peer: HttpPeer) -> Response:
    # 401 before anything else.
    principal = peer.principal()
    try:
        filter = listing_terms(params, services.config.max_list_page)
        filter = services.access.listing_filter(principal, filter)
        if "cursor" in params:
            if filter.offset != 0:
                raise BadParameter("cursor and a non-zero offset cannot be used together")
            filter.after = position_of(params["cursor"], filter)
    except (BadParameter, BadCursor) as exc:
        return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
    refusal = refused_before_read(services, peer)
    if refusal is not None:
        return refusal
    # One more than the page, to know whether another follows (a cursor, or null).
    limit = filter.limit
    asked = msgspec.structs.replace(filter, limit=limit + 1)
    # In a read slot, as a page is: its page is decoded, and its walk is the store's.
    result = await services.page_reads.read(lambda: services.manager.list_sessions(asked))
    charge_examined(services, peer, result.examined)
    more = len(result.sessions) > limit
    sessions = within_bytes(result.sessions[:limit], services.config.max_page_bytes)
    more = more or len(sessions) < len(result.sessions[:limit])
    next_cursor = cursor_after(filter, sessions[-1]) if more and sessions else None
    page = ListingPage(sessions, result.total, result.offset, limit, next_cursor)
    return as_page(services, peer, json_response(http.HTTPStatus.OK, page))


def listing_terms(params: dict[str, str], max_page: int) -> SessionFilter:
    """The filter a listing's query asks for, or :class:`BadParameter` saying what is
    wrong with it (a 400)."""
    # The lax conversion below reads every value from its string, and would also
    # take "1e2" or "100.0" for an integer, and a number of seconds for a time:
    # integers are plain digits and times RFC 3339, as on the other endpoints.
    # The integers go in as read here: msgspec's own reading of a string refuses
    # some plain digits ("05") that the other endpoints take.
    values: dict[str, object] = dict(params)
    # Keyset paging's place is read from ``cursor`` (list_cursor.py), never given here.
    values.pop("after", None)
    # Without a limit, the default page, or the most --max-list-page allows when
    # it is set lower: a listing was refused for a size it never asked for.
    default_limit = min(_DEFAULT_LIST_PAGE, max_page)
    values["limit"] = _integer(params, "limit", default_limit, 1, max_page)
    if "offset" in params:
        values["offset"] = _integer(params, "offset", None, 0)
    try:
        for name in _TIME_PARAMETERS:
            if name in params:
                values[name] = time_read(params[name]) or params[name]
                msgspec.convert(values[name], datetime)
        return msgspec.convert(values, SessionFilter, strict=False)
    except msgspec.ValidationError as exc:
        raise BadParameter(str(exc)) from None


async def _session_resource(
    services: Services, rest: str, params: dict[str, str], peer: HttpPeer
) -> Response:
    # Authentication comes first (401 even for a missing session), then 404, then 403.
    principal = peer.principal()
    session_id, slash, tail = (urllib.parse.unquote(part) for part in rest.partition("/"))
    # "{id}" or "{id}/events": "{id}/" is no path of the API (it was served as "{id}").
    if not is_valid_session_id(session_id) or (tail, slash) not in (("", ""), ("events", "/")):
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "no such endpoint")
    # The request's own terms before what its peer may read, as for the list: a bad
    # parameter is 400 whatever the peer's debt (a 429 first would have it retry, only
    # to be told 400 after the wait), and whether or not the session exists.
    try:
        terms = resource_terms(tail, params)
    except BadParameter as exc:
        return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", str(exc))
    if principal is not None:
        # A token scoped to another session (sid) is refused before the store is asked,
        # as a hello is: a 404 here and a 403 there told it which other ids exist.
        check_session_id_for(principal, session_id)
    # Before anything is read: a peer refused for what it reads, or for what it and
    # others leave unread, costs the store nothing (http_pages.py, in this order).
    refusal = refused_before_read(services, peer)
    if refusal is not None:
        return refusal
    reads = services.page_reads
    # One deadline for every store read of the request (websockets drops a request
    # not answered within its open_timeout); the page takes a slot too.
    deadline = reads.deadline()
    # A delete of it under way here first, as for a hello: mid-delete the store may not
    # have the session it then brings back, and a 404 would tell the asker it is gone.
    await services.manager.actors.unheld(session_id, deadline)
    metadata = await reads.lookup(lambda: services.manager.get_metadata(session_id), deadline)
    if metadata is None or metadata.is_expired(services.manager.storage.now()):
        return error_response(http.HTTPStatus.NOT_FOUND, "not_found", "session not found")
    services.access.check_session(principal, metadata)
    if tail == "events":
        after_seq, limit = terms
        read_events = functools.partial(_events, services, metadata, after_seq or 0, limit)
        events = await reads.read(read_events, deadline)
        return as_page(services, peer, events)
    limit, before = terms
    if limit is None and before is None:
        # The whole history, streamed: the messages this metadata counts, from the log
        # of its epoch (a session replaced meanwhile fails the reads).
        storage, max_bytes = services.manager.storage, services.config.max_page_bytes
        whole = await whole_history_response(reads, storage, metadata, max_bytes, deadline)
        return paced(services, peer, whole, max_bytes)
    page = await reads.read(lambda: _session(services, metadata, limit, before), deadline)
    return as_page(services, peer, page)


def resource_terms(tail: str, params: dict[str, str]) -> tuple[int | None, int | None]:
    """A session resource's query: ``(after_seq, limit)`` for its events (``tail``
    ``"events"``), else ``(limit, before)`` for its history; :class:`BadParameter`."""
    if tail == "events":
        return _integer(params, "after_seq", 0, 0), _integer(params, "limit", 1000, 1)
    return _integer(params, "limit", None, 1), _integer(params, "before", None, 0)


class BadParameter(ValueError):
    """A query parameter the endpoint cannot take: a 400 that says which."""


_INT64_MAX = 2**63 - 1  # as the protocol's integers (docs/protocol.md, Integers)
_DEFAULT_LIST_PAGE = SessionFilter().limit  # the protocol's default page size, 100


def _integer(
    params: dict[str, str],
    name: str,
    default: int | None,
    minimum: int,
    maximum: int = _INT64_MAX,
) -> int | None:
    raw = params.get(name)
    if raw is None:
        return default
    # Plain decimal digits only: int() would also take "1_0", " 7" or "+7". Leading
    # zeros do not count ("05" is 5): 20 digits of 1 were refused as out of range. Past
    # 19 digits without them, the value is out of range. int() is given the digits
    # without them: it raises past 4,300 digits, leading zeros counted.
    digits = raw.lstrip("0") or "0"
    if not (raw.isascii() and raw.isdigit()) or len(digits) > 19:
        raise BadParameter(f"{name} must be an integer from {minimum} to {maximum}")
    value = int(digits)
    if not minimum <= value <= maximum:
        raise BadParameter(f"{name} must be an integer from {minimum} to {maximum}")
    return value


async def _session(
    services: Services, metadata: SessionMetadata, limit: int | None, before: int | None
) -> Response:
    """The metadata and a page of its history (the extension: the newest ``limit``
    messages before index ``before``, oldest first, bounded in bytes too; ``has_more``
    and ``start``). Without either, the whole history: whole_history.py."""
    config = services.config
    page = await history_page(
        services.manager.storage,
        metadata.id,
        min(limit or DEFAULT_HISTORY_PAGE, config.max_history_page),
        before,
        config.max_page_bytes,
        epoch=metadata.epoch,  # the session the request was allowed to read, or 404
    )
    body = {
        "metadata": metadata,
        "messages": page.messages,
        "has_more": page.has_more,
        "start": page.start,
    }
    return json_response(http.HTTPStatus.OK, body)


async def _events(
    services: Services, metadata: SessionMetadata, after_seq: int, limit: int | None
) -> Response:
    """A page of the log of the session ``metadata`` describes (the one whose access
    was checked), and its last seq: both fenced by its epoch, so a session deleted or
    replaced under its id meanwhile (another log, perhaps another user's) is 404, never
    read, nor half read. The answer names that epoch, so a reader can tell which log
    the events are of."""
    config = services.config
    stored, last_seq = await page_and_last_seq(
        services.manager.storage,
        metadata.id,
        after_seq,
        min(limit or 1000, config.max_events_page),
        config.max_page_bytes,
        metadata.epoch,
    )
    records = [EventRecord(e.seq, e.ts, e.event_json) for e in stored]
    body = {"events": records, "last_seq": last_seq, "epoch": metadata.epoch}
    return json_response(http.HTTPStatus.OK, body)
