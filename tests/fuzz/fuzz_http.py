"""atheris harness: the HTTP request parser and the query readers a peer reaches.

Bytes as a peer sends them, in chunks, to websockets' protocol object with our parser
(server/http_requests.py ``parse_request``, as http_wire.py sets it up): feeding them
raises nothing (an exception there is a traceback in ``data_received``). A request it
parsed then goes through what the app reads of it before any store: the Host and
Origin rules, CORS, the routes, websockets' handshake with our subprotocols (an answer,
not a 500), the list endpoint's parameters (``listing_terms``) and a
session resource's (``resource_terms``), the bearer token; a refusal is ``BadRoute`` or
``BadParameter`` (400, 404) and nothing else.
"""

from __future__ import annotations

import urllib.parse

import atheris
from harness import run

with atheris.instrument_imports(include=["bamboo_session", "websockets", "urllib"]):
    from websockets.http11 import Request
    from websockets.server import ServerProtocol

    from bamboo_session.protocol.codec import SUBPROTOCOLS
    from bamboo_session.protocol.ids import is_valid_session_id
    from bamboo_session.server import web
    from bamboo_session.server.auth import bearer_token
    from bamboo_session.server.cors import allowed_origin, is_preflight
    from bamboo_session.server.http import (
        SESSIONS_PATH,
        BadParameter,
        BadRoute,
        is_session_api,
        is_stream_path,
        is_upgrade,
        listing_terms,
        resource_terms,
        stream_route,
    )
    from bamboo_session.server.http_requests import json_reject, parse_request
    from bamboo_session.server.origins import RequestGuard, is_malformed_authority
    from bamboo_session.server.subprotocols import select_subprotocol

SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Upgrade")  # app.py's
GUARDS = (
    RequestGuard("127.0.0.1", False),
    RequestGuard("0.0.0.0", False, ("https://app.example",), ("api.example",)),
)


def requests_of(data: bytes, chunk: int) -> list[Request]:
    protocol = ServerProtocol()
    protocol.reject = json_reject  # type: ignore[method-assign]
    protocol.parser = parse_request(protocol)
    next(protocol.parser)
    for start in range(0, len(data), chunk):
        protocol.receive_data(data[start : start + chunk])
    protocol.receive_eof()
    protocol.data_to_send()
    return [event for event in protocol.events_received() if isinstance(event, Request)]


def check_upgrade(request: Request) -> None:
    """websockets' handshake with our subprotocols: an answer, never a 500 (which
    websockets gives, with a logged traceback, for an exception it did not expect)."""
    protocol = ServerProtocol(
        subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        select_subprotocol=lambda _protocol, offered: select_subprotocol(None, offered),  # type: ignore[arg-type]
    )
    response = protocol.accept(request)
    assert response.status_code != 500, (response, protocol.handshake_exc)


def check_request(request: Request) -> None:
    headers = request.headers
    if any(len(headers.get_all(name)) > 1 for name in SINGLE_HEADERS):
        return  # 400 before anything reads them (app.py)
    is_malformed_authority(headers.get("Host") or "")
    for guard in GUARDS:
        guard.host_allowed(headers.get("Host"))
        guard.origin_allowed(headers.get("Origin"))
        allowed_origin(guard, request)
    is_preflight(request)
    is_upgrade(request)
    bearer_token(headers.get("Authorization"))
    path, _, query = request.path.partition("?")
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=False))
    if is_stream_path(request.path):
        try:
            route = stream_route(request.path)
        except BadRoute:
            return
        assert route.session_id is None or is_valid_session_id(route.session_id)
        if is_upgrade(request):
            check_upgrade(request)
        return
    web.is_web_path(path)
    if not is_session_api(request.path):
        return
    try:
        if path == SESSIONS_PATH:
            listing = listing_terms(params, 500)
            assert 1 <= listing.limit <= 500 and listing.offset >= 0, listing
            return
        rest = path[len(SESSIONS_PATH) + 1 :]
        session_id, _, tail = (urllib.parse.unquote(part) for part in rest.partition("/"))
        if is_valid_session_id(session_id) and tail in ("", "events"):
            terms = resource_terms(tail, params)
            assert all(term is None or 0 <= term < 2**63 for term in terms), terms
    except BadParameter:
        return


def one_input(data: bytes) -> None:
    if not data:
        return
    chunk = 1 + data[0] % 64 if data[0] & 0x80 else len(data)
    for request in requests_of(data[1:], max(chunk, 1)):
        check_request(request)


def _seeds() -> list[bytes]:
    heads = [
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "\r\n\r\nGET /api/v1/sessions?limit=5&offset=3&state=active&user_id=u"
        "&created_after=2024-01-02T03:04:05Z&sort_by=created_at&sort_order=asc"
        "&title_contains=x HTTP/1.1\r\nHost: localhost:8765\r\n"
        "Authorization: Bearer abc.def.ghi\r\n\r\n",
        "GET /api/v1/sessions/s%2Dx/events?after_seq=0&limit=10 HTTP/1.1\r\n"
        "Host: [::1]:80\r\nOrigin: http://localhost:3000\r\n\r\n",
        "HEAD /api/v1/sessions/abc?limit=2&before=7 HTTP/1.0\r\nHost: a\r\n\r\n",
        "GET /api/v1/stream/abc HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bamboo.v1.msgpack\r\n\r\n",
        "OPTIONS /api/v1/sessions HTTP/1.1\r\nHost: api.example\r\n"
        "Origin: https://app.example\r\nAccess-Control-Request-Method: GET\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
        "GET /console/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    return [b"\x00" + head.encode() for head in heads] + [b"\x85" + heads[1].encode()]


if __name__ == "__main__":
    words = ["GET ", " HTTP/1.1\r\n", "\r\n", "Host: ", "Origin: ", "Authorization: Bearer "]
    words += ["/api/v1/sessions", "/api/v1/stream/", "limit=", "offset=", "before="]
    words += ["after_seq=", "created_after=", "state=", "%2F", "%00", "&", "?", "[::1]"]
    words += ["Content-Length: ", "Transfer-Encoding: ", "Upgrade: websocket\r\n"]
    run("http", one_input, _seeds(), words)
