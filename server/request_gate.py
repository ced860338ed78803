"""What a request arriving on the port is answered before it becomes a WebSocket, if
it does: each header that decides something read once (two of one refused), the Host
and Origin checks, CORS preflights, the GET endpoints (server/http.py), the stream
route kept on the connection for its handler; an answer let out as its peer's share of
the unread answers allows (answer_admission.py), its page charged to the peer's reads.
``BambooServer`` (app.py) hands :meth:`RequestGate.process_request` to each
connection's task (upgrade_task.py)."""

from __future__ import annotations

import http

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from .answer_admission import admit_answer
from .cors import is_preflight, preflight, with_cors
from .http import (
    BadRoute,
    handle_get,
    is_stream_path,
    opens_websocket,
    stream_route,
    upgrade_required,
)
from .http_peer import HttpPeer
from .http_wire import BambooConnection
from .origins import RequestGuard, host_fault
from .responses import error_response, last_on_its_connection
from .services import Services

# Headers whose value decides something: two of them are ambiguous, and refused.
_SINGLE_HEADERS = ("Host", "Origin", "Authorization", "Upgrade")


class RequestGate:
    """The requests of one server, answered with its services and its Host and Origin
    guard."""

    def __init__(self, services: Services, guard: RequestGuard) -> None:
        self.services = services
        self.config = services.config
        self.access = services.access
        self.unread_answers = services.unread_answers
        self.guard = guard

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """websockets' ``process_request``: the answer to ``request``, let out as its
        peer's share of the unread answers allows, else None (the upgrade goes on)."""
        assert isinstance(connection, BambooConnection)  # serve()'s create_connection
        peer = HttpPeer.of(self.access, request, connection)
        try:
            response = await self._answer_request(request, peer, connection)
        except BaseException:
            peer.settle(0)  # what its page's read was charged ahead, given back
            raise
        if response is None:
            return None
        response, page = admit_answer(
            self.unread_answers, self.config, connection, request, peer, response
        )
        # The page was read (a HEAD's too): it costs its peer's reads whether the unread
        # answers let it out or refused it (429, 503). A refused read that cost nothing
        # could be had again and again: a peer that kept its part nearly full had some
        # 130 pages of 1 MiB a second read for it, four times its allowance.
        peer.settle(page)
        # A page of an origin that may open a WebSocket here may read the answer too.
        return last_on_its_connection(with_cors(self.guard, request, response))

    async def _answer_request(
        self, request: Request, peer: HttpPeer, connection: BambooConnection
    ) -> Response | None:
        """The answer to a request that does not become a WebSocket, else None (the
        upgrade's route then kept on ``connection`` for its handler)."""
        # Each header that decides something read once, here: its one value, or None.
        single: list[str | None] = []
        for name in _SINGLE_HEADERS:
            values = request.headers.get_all(name)
            if len(values) > 1:
                message = f"more than one {name} header"
                return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", message)
            single.append(values[0] if values else None)
        host, origin, _, upgrade = single
        fault = host_fault(host, request.protocol)
        if fault is not None:
            # Whatever the host checks allow: a server refuses an invalid Host (RFC
            # 9112 3.2), and the guard reads only its host part.
            return error_response(http.HTTPStatus.BAD_REQUEST, "bad_request", fault)
        if not self.guard.host_allowed(host):
            # A page rebinding its own name to this server: it reads nothing here.
            return error_response(http.HTTPStatus.FORBIDDEN, "forbidden", "host not allowed")
        if is_preflight(request):
            return preflight(self.guard, request)
        if not opens_websocket(request, upgrade):
            if is_stream_path(request.path) and request.method in ("GET", "HEAD"):
                return upgrade_required()
            # A page the unread answers could not take is refused before it is read,
            # once the request is authenticated (http_pages.py refused_before_read).
            return await handle_get(self.services, request, peer)
        try:
            connection.route = stream_route(request.path)
        except BadRoute as exc:
            code = "not_found" if exc.status == http.HTTPStatus.NOT_FOUND else "bad_request"
            return error_response(exc.status, code, exc.message)
        if not self.guard.origin_allowed(origin):
            return error_response(http.HTTPStatus.FORBIDDEN, "forbidden", "origin not allowed")
        return None
