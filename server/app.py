"""BambooServer: the websockets server, its storage and SessionManager, start to stop.

Shutdown follows uvicorn's order: stop accepting, send ``closed`` and close every
connection with 1012, let actors flush and checkpoint within a grace period, cancel the
rest, close storage (within ``--store-close-timeout``: server/stop_bounds.py). From its
start, what peers send is dropped unread, and once every peer has its last bytes the
server goes: close replies are not waited for (server/shutdown.py).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Callable
from typing import Self

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve

from bamboo_session.persistence.base import Storage
from bamboo_session.protocol.codec import CODECS_BY_SUBPROTOCOL, JSON, SUBPROTOCOLS
from bamboo_session.protocol.errors import CloseCode

from .arriving_frames import MESSAGE_SLACK, ArrivingFrames
from .auth import AccessPolicy, authenticator_for, check_binding
from .budget import NO_LIMIT
from .config import ServerConfig
from .connection import Connection
from .flush import Flusher
from .http_requests import UnansweredRequests
from .http_wire import BambooConnection
from .limits import connection_cap
from .logs import announce
from .manager import SessionManager
from .manager_stop import after_sessions, close_sessions
from .memory_return import MemoryReturn
from .metrics import Metrics
from .origins import RequestGuard
from .quotas import SessionQuotas
from .read_allowance import ReadAllowances
from .readiness import Readiness
from .replay_shares import ReplayShares
from .request_gate import RequestGate
from .services import Services
from .shutdown import bytes_delivered, close_unattached, drop_connections, peers_closing
from .stop_bounds import (
    CLOSING_THE_SESSIONS,
    CLOSING_THE_STORE,
    DELIVERING,
    ENDING_THE_BACKGROUND,
    PARKING,
    close_store_within,
)
from .store_stats import StoreStats, build_labels
from .stored_caps import StoredCaps
from .subprotocols import select_subprotocol
from .unread_answers import UnreadAnswers
from .upgrade_task import handler_task
from .user_connections import LocalUserConnections, user_connections_for

log = structlog.get_logger("bamboo_session.server")


class BambooServer:
    """One server instance: ``async with BambooServer(config) as server: ...``."""

    def __init__(
        self,
        config: ServerConfig,
        storage: Storage | None = None,
        *,
        reuse_port: bool = False,
        before_listening: Callable[[], object] | None = None,
    ) -> None:
        self.config = config
        self.reuse_port = reuse_port  # one of several workers on one port (supervisor.py)
        # Called just before the listener opens: `serve` settles its collector (cli.py).
        self._before_listening = before_listening
        self.metrics = Metrics()
        self._given_storage = storage
        self.storage: Storage | None = storage
        self._manager: SessionManager | None = None
        self._services: Services | None = None
        self._server: Server | None = None
        self.stop_phase = ""  # where a stop is at, for the log of one that cannot end
        self.store_closed = True  # False: the stop's close of the store did not end
        # Every connection from accept to end, upgraded or not (BambooConnection).
        self._open_connections: set[BambooConnection] = set()
        # Checked here, before any storage is opened: a bad config changes nothing.
        check_binding(config.host, config.auth_secret, config.insecure)
        self.access = AccessPolicy(authenticator_for(config))
        # Counted in the store once it is open, if several instances share it.
        self.user_connections = LocalUserConnections(config.max_connections_per_user)
        # Plain HTTP answers not yet taken by their peers get a quarter of the memory
        # budget, apart from the sessions' share: a server busy streaming still serves
        # its pages. One peer's may hold --answer-peer-share of that, so that a peer
        # whose answers stay unread cannot hold up everyone else's.
        budget = config.memory_budget // 4 if config.memory_budget > 0 else NO_LIMIT
        peer_budget = int(budget * config.answer_peer_share) if budget != NO_LIMIT else NO_LIMIT
        refused = self.metrics.answers_refused
        self.unread_answers = UnreadAnswers(
            budget,
            peer_budget,
            lambda full: refused.labels(full).inc(),
            self.metrics.answers_dropped.inc,
        )
        # Requests being read, heads and early frames, a sixteenth (16 MiB by default:
        # a thousand heads of the largest size, ten times as many of a browser's).
        unanswered = config.memory_budget // 16 if config.memory_budget > 0 else NO_LIMIT
        self.unanswered_requests = UnansweredRequests(unanswered, self.metrics.requests_dropped.inc)
        # Messages still arriving: a sixteenth too, and one of the largest always fits.
        arriving = max(config.memory_budget // 16, config.max_frame_bytes + MESSAGE_SLACK)
        self.arriving_frames = ArrivingFrames(arriving if config.memory_budget > 0 else NO_LIMIT)
        self.memory_return = MemoryReturn()
        self.guard = RequestGuard(
            config.host,
            config.auth_secret is not None,
            config.allowed_origins,
            config.allowed_hosts,
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if self.storage is None:
            self.storage = await open_configured_storage(self.config)
        try:
            await self._listen()
        except BaseException:
            if self._manager is not None:  # not writing into the store closed below
                await self._manager.restart_park.stop()
            if self._given_storage is None:
                await self.storage.close()
            raise

    async def _listen(self) -> None:
        assert self.storage is not None
        config = self.config
        self._manager = SessionManager(config.manager_config(), self.storage, self.metrics)
        self._manager.start()
        if self._given_storage is None:  # opened here: this server's store, for `serve`
            await self._manager.park_left_attached()
        self.user_connections = user_connections_for(self.storage, config.max_connections_per_user)
        # A store handed in may live anywhere: its files are not ours to size.
        store_url = "" if self._given_storage is not None else config.store_url()
        stored_caps = StoredCaps(config, self.metrics)
        self._services = Services(
            config,
            self._manager,
            self.metrics,
            self.access,
            self.user_connections,
            Readiness(
                self.storage,
                self._manager.append_health,
                config.max_frame_bytes,
                self._manager.page_reads,
                serving=lambda: self._server is not None,
            ),
            StoreStats(
                self.storage, store_url, self.metrics, self._manager.page_reads, stored_caps
            ),
            SessionQuotas(self.storage, config, self._manager.page_reads),
            stored_caps,
            Flusher(),
            self._manager.page_reads,
            ReadAllowances(config.rate_limit_bytes, config.rate_limit_bytes_burst),
            self.unread_answers,
            ReplayShares(config.memory_budget, config.replay_peer_share, config.replay_total_share),
        )
        if self._before_listening is not None:
            self._before_listening()
        server = serve(
            self._handle,
            config.host,
            config.port,
            create_connection=functools.partial(  # type: ignore[arg-type]
                BambooConnection,
                open_connections=self._open_connections,
                max_connections=connection_cap(config.max_connections),
                on_over_limit=self.metrics.connections_over_limit.inc,
                on_late_head=self.metrics.requests_timed_out.inc,
                read_rate=(config.rate_limit_bytes, config.rate_limit_bytes_burst),
                on_read_wait=self.metrics.read_wait_seconds.inc,
                unanswered_requests=self.unanswered_requests,
                arriving_frames=self.arriving_frames,
                max_queue_bytes=config.max_queue_bytes,
            ),
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            select_subprotocol=select_subprotocol,
            compression="deflate" if config.compression else None,
            max_size=config.max_frame_bytes,
            max_queue=config.max_queue,
            write_limit=config.write_limit,
            ping_interval=config.ping_interval,
            ping_timeout=config.ping_timeout,
            close_timeout=config.close_timeout,
            open_timeout=None,  # BambooConnection's (OPEN_TIMEOUT), not a streamed body's
            backlog=config.backlog,
            reuse_port=self.reuse_port,
        )
        # Each connection's task, set before any can come: websockets' less what is
        # not used here, process_request ours (upgrade_task.py).
        gate = RequestGate(self.services, self.guard)
        server.handler = handler_task(server, gate.process_request, self._handle)  # type: ignore[assignment]
        self._server = await server
        self.user_connections.start()  # its heartbeat, once nothing can fail the start
        self.services.store_stats.start()  # the count nearing --max-stored-sessions
        self.memory_return.start()  # freed memory back to the system (memory_return.py)
        # One line that says where, whatever the log format and level: scripts wait for it.
        announce(
            f"listening on {config.host}:{self.port}",
            host=config.host,
            port=self.port,
            store=config.store_for_logs(),
            pid=os.getpid(),
            **build_labels(self.storage),  # which build, on which store format
        )

    async def stop(self, *, exiting: bool = False) -> None:
        """Graceful shutdown; safe to call twice. With ``exiting``, the process ends
        right after: its exit closes the sockets; the handlers are not waited for."""
        server, self._server = self._server, None
        if server is None:
            return
        started = time.monotonic()
        server.server.close()  # stop accepting first; upgrades under way get 503
        grace, reason = self.config.shutdown_grace, "server restarting"
        connections = self._open_connections
        count = len(connections)
        # Nothing a peer sends is answered any more: its close reply least of all.
        with peers_closing(connections, grace):
            self._stop_phase(CLOSING_THE_SESSIONS)
            self.manager.restart_park.on_stop_park = functools.partial(self._stop_phase, PARKING)
            await close_sessions(self.manager, CloseCode.SERVICE_RESTART, reason, grace)
            closing = close_unattached(connections, reason)  # before the park: manager_stop.py
            await after_sessions(self.manager)
            self._stop_phase(DELIVERING)
            owed = await bytes_delivered(connections, grace)
            if owed:
                log.warning("peers still owed their close after the grace period", peers=owed)
            delivered = time.monotonic()
            if not exiting:
                await self._end_connections(server, closing, grace)
            self._stop_phase(ENDING_THE_BACKGROUND)
            await self.user_connections.stop(grace)
            await self.services.store_stats.stop()
            await self.memory_return.stop()
            if self._given_storage is None and self.storage is not None:
                self._stop_phase(CLOSING_THE_STORE)
                timeout = self.config.store_close_timeout
                self.store_closed = await close_store_within(self.storage, timeout)
        log.info(
            "stopped",
            connections=count,
            connections_seconds=round(delivered - started, 3),
            storage_seconds=round(time.monotonic() - delivered, 3),
        )

    def _stop_phase(self, phase: str) -> None:
        self.stop_phase = phase
        log.debug("stop phase", phase=phase)

    async def _end_connections(
        self, server: Server, closing: list[asyncio.Task[None]], grace: float
    ) -> None:
        """Every socket closed and every handler finished, before the store closes."""
        drop_connections(self._open_connections)
        server.close(close_connections=False)
        try:
            async with asyncio.timeout(grace):  # not wait_for: 3.11's drops a cancellation
                await server.wait_closed()
        except TimeoutError:
            log.warning("connection handlers still running after the grace period")
        await asyncio.gather(*closing, return_exceptions=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("server not started")
        return self._services

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

    async def _handle(self, ws: ServerConnection) -> None:
        assert isinstance(ws, BambooConnection)  # create_connection makes no other
        route = ws.route  # set by the request's gate: no upgrade reaches here without it
        assert route is not None
        codec = CODECS_BY_SUBPROTOCOL.get(ws.subprotocol or "", JSON)
        await Connection(self.services, ws, codec, route.session_id).run()


async def open_configured_storage(config: ServerConfig) -> Storage:
    """The store ``config`` names (``--store``, else the JSONL store in ``--data-dir``)."""
    from bamboo_session.persistence import open_storage

    return await open_storage(
        config.store_url(),
        default_ttl=config.default_ttl,
        cleanup_interval=config.cleanup_interval,
        max_sessions=config.max_stored_sessions or None,
        max_session_bytes=config.max_session_bytes or None,
        max_user_bytes=config.max_user_bytes or None,
    )
