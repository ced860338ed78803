"""BambooServer: the websockets server, its storage and SessionManager, start to stop.

Shutdown follows uvicorn's order: stop accepting, send ``closed`` and close every
connection with 1012, let actors flush and checkpoint within a grace period, cancel the
rest, close storage.
"""

from __future__ import annotations

import asyncio
import http
import time
from collections.abc import Sequence
from typing import Self

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import NegotiationError
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from bamboo_session.persistence.base import SessionFilter, Storage
from bamboo_session.protocol.codec import CODECS_BY_SUBPROTOCOL, JSON, SUBPROTOCOLS
from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Hello
from bamboo_session.protocol.models import SessionMetadata

from .auth import (
    Authenticator,
    Forbidden,
    Principal,
    Unauthorized,
    bearer_token,
    check_access,
    check_binding,
    check_new_session,
    check_session_id,
    origin_allowed,
)
from .config import ServerConfig
from .connection import Connection
from .http import BadRoute, error_response, handle_get, is_upgrade, stream_route
from .limits import ConnectionCounter
from .manager import SessionManager
from .metrics import Metrics

log = structlog.get_logger("bamboo_session.server")


class BambooServer:
    """One server instance: ``async with BambooServer(config) as server: ...``."""

    def __init__(self, config: ServerConfig, storage: Storage | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self._given_storage = storage
        self.storage: Storage | None = storage
        self._manager: SessionManager | None = None
        self._server: Server | None = None
        # Checked here, before any storage is opened: a bad config changes nothing.
        check_binding(config.host, config.auth_secret, config.insecure)
        self.authenticator = (
            Authenticator(config.auth_secret) if config.auth_secret is not None else None
        )
        self.user_connections = ConnectionCounter(config.max_connections_per_user)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self.storage is None:
            self.storage = await open_default_storage(self.config)
        try:
            await self._listen()
        except BaseException:
            if self._given_storage is None:
                await self.storage.close()
            raise

    async def _listen(self) -> None:
        assert self.storage is not None
        self._manager = SessionManager(self.config.manager_config(), self.storage, self.metrics)
        self._manager.start()
        config = self.config
        self._server = await serve(
            self._handle,
            config.host,
            config.port,
            process_request=self._process_request,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=select_subprotocol,
            compression="deflate" if config.compression else None,
            max_size=config.max_frame_bytes,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            backlog=config.backlog,
        )
        log.info("listening", host=config.host, port=self.port, data_dir=config.data_dir)

    async def stop(self) -> None:
        """Graceful shutdown; safe to call twice."""
        server, self._server = self._server, None
        if server is None:
            return
        started = time.monotonic()
        server.server.close()  # stop accepting first
        grace = self.config.shutdown_grace
        await self.manager.close(CloseCode.SERVICE_RESTART, "server restarting", grace)
        server.close(
            close_connections=True, code=CloseCode.SERVICE_RESTART, reason="server restarting"
        )
        try:
            await asyncio.wait_for(server.wait_closed(), grace)
        except TimeoutError:
            log.warning("connections still open after the grace period")
        closed = time.monotonic()
        if self._given_storage is None and self.storage is not None:
            await self.storage.close()
        log.info(
            "stopped",
            connections_seconds=round(closed - started, 3),
            storage_seconds=round(time.monotonic() - closed, 3),
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def manager(self) -> SessionManager:
        if self._manager is None:
            raise RuntimeError("server not started")
        return self._manager

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def ready(self) -> bool:
        return self._server is not None and self.storage is not None and self.storage.ready

    # -- requests ------------------------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        if not is_upgrade(request):
            return await handle_get(self, request)
        try:
            stream_route(request.path)
        except BadRoute as exc:
            return error_response(exc.status, "bad_request", exc.message)
        return self.authorize_upgrade(request)

    async def _handle(self, ws: ServerConnection) -> None:
        route = stream_route(ws.request.path if ws.request is not None else "")
        codec = CODECS_BY_SUBPROTOCOL.get(ws.subprotocol or "", JSON)
        await Connection(self, ws, codec, route.session_id).run()

    async def resolve_session(
        self, session_id: str | None, hello: Hello, principal: Principal | None = None
    ) -> str:
        """The session a ``hello`` attaches to, created first where it asks for that.

        Under auth, raises :class:`Forbidden` before anything is created or sent when
        ``principal`` may not have it; a session created here belongs to its ``sub``."""
        manager = self.manager
        owner = hello.user_id if principal is None else principal.sub
        if session_id is None:
            if principal is not None:
                check_new_session(principal)
            session = await manager.create_session(owner, hello.title)
            return session.id
        if principal is not None:
            check_session_id(principal, session_id)
        metadata: SessionMetadata | None = None
        if hello.create:
            metadata = await manager.ensure_session(session_id, owner, hello.title)
        if principal is not None:
            metadata = metadata or await manager.get_metadata(session_id)
            if metadata is not None:  # a missing one is 4404 when attaching
                check_access(principal, metadata)
        return session_id

    # -- authorization -------------------------------------------------------------------

    def authenticate_hello(self, request: Request | None, hello: Hello) -> Principal | None:
        """The principal of a connection (``hello.token``, else the upgrade's bearer
        token), or None when auth is off. Raises :class:`Unauthorized`."""
        if self.authenticator is None:
            return None
        token = hello.token
        if not token and request is not None:
            token = bearer_token(request.headers.get("Authorization"))
        return self.authenticator.verify(token)

    def connection_user(self, principal: Principal | None, hello: Hello) -> str | None:
        """Whom a connection counts against in ``max_connections_per_user``: the token's
        ``sub``, else ``hello.user_id``; anonymous connections are not counted."""
        return principal.sub if principal is not None else hello.user_id

    def authorize_upgrade(self, request: Request) -> Response | None:
        if not origin_allowed(request.headers.get("Origin"), self.config.allowed_origins):
            return error_response(http.HTTPStatus.FORBIDDEN, "forbidden", "origin not allowed")
        return None

    def _authenticate_request(self, request: Request) -> Principal | Response | None:
        if self.authenticator is None:
            return None
        try:
            return self.authenticator.verify(bearer_token(request.headers.get("Authorization")))
        except Unauthorized as exc:
            response = error_response(http.HTTPStatus.UNAUTHORIZED, "unauthorized", str(exc))
            response.headers["WWW-Authenticate"] = 'Bearer realm="bamboo"'
            return response

    def authorize_listing(
        self, request: Request, filter: SessionFilter
    ) -> tuple[Response | None, SessionFilter]:
        """Under auth: only the caller's sessions (any for admin); asking for another
        user's is 403, and a ``sid`` token may not list at all."""
        principal = self._authenticate_request(request)
        if principal is None:
            return None, filter
        if isinstance(principal, Response):
            return principal, filter
        if principal.sid is not None:
            return _forbidden("this token is scoped to one session"), filter
        if principal.is_admin:
            return None, filter
        if filter.user_id is not None and filter.user_id != principal.sub:
            return _forbidden("you may list only your own sessions"), filter
        filter.user_id = principal.sub
        return None, filter

    def authorize_session(
        self, request: Request, metadata: SessionMetadata | None
    ) -> Response | None:
        """Under auth: 401 without a valid token (even for a missing session), 403 for
        a session the caller may not read. ``metadata`` None: only authenticate."""
        principal = self._authenticate_request(request)
        if principal is None or isinstance(principal, Response):
            return principal
        if metadata is None:
            return None
        try:
            check_access(principal, metadata)
        except Forbidden as exc:
            return _forbidden(str(exc))
        return None


def _forbidden(message: str) -> Response:
    return error_response(http.HTTPStatus.FORBIDDEN, "forbidden", message)


def select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    """The client's first offered subprotocol that we speak; none offered means JSON."""
    if not offered:
        return None
    for subprotocol in offered:
        if subprotocol in CODECS_BY_SUBPROTOCOL:
            return subprotocol
    raise NegotiationError(f"unsupported subprotocol; expected one of {', '.join(SUBPROTOCOLS)}")


async def open_default_storage(config: ServerConfig) -> Storage:
    """The embedded JSONL store in ``config.data_dir``."""
    from bamboo_session.persistence import JsonlStorage, JsonlStorageConfig

    storage_config = JsonlStorageConfig(
        config.data_dir,
        default_ttl=config.default_ttl,
        cleanup_interval=config.cleanup_interval,
        durability=config.durability,
    )
    return await JsonlStorage.open(storage_config)
