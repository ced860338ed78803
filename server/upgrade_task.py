"""A connection's task from accept to end: websockets' (17.4) ``protocol_handler`` and
``ServerConnection.handshake``, without what this server never uses.

websockets wraps the handshake in ``asyncio.timeout(open_timeout)``, which is
``asyncio.timeout(None)`` here (the open timeout is BambooConnection's, outside a
streamed answer's body: http_wire.OPEN_TIMEOUT): a deadline that never comes, at two
look-ups of the running loop, each a ``getpid`` syscall on Python 3.11. Its handshake
waits for the request with ``asyncio.wait`` on two futures (a set, a waiter, a callback
on each, a turn of the loop once done), where the connection wakes one future of its
own (request_wait.py ``_wake_handshake``), and it checks that a ``process_request`` or
``process_response`` it was handed may be awaited, where this server's is a coroutine
and it has no other. What a peer sees is websockets' to the byte (but that a refusal of
a HEAD has no body, and that every head says ``Server: bamboo-session``, no version:
answer_heads.py): the same answers, the same 500 for a request whose checks fail, the
same 503 once the server stops, the same abort of a connection whose upgrade did not
happen.
"""

from __future__ import annotations

import asyncio
import functools
import http
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import CONNECTING, OPEN

if TYPE_CHECKING:
    from .http_wire import BambooConnection

ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None]]
Handler = Callable[[ServerConnection], Awaitable[None]]


def handler_task(
    server: Server, process_request: ProcessRequest, handler: Handler
) -> Callable[[BambooConnection], Awaitable[None]]:
    """What ``server`` runs in each connection's task (its ``handler``, which
    ``ServerConnection.connection_made`` starts)."""
    return functools.partial(run_connection, server, process_request, handler)


async def run_connection(
    server: Server,
    process_request: ProcessRequest,
    handler: Handler,
    connection: BambooConnection,
) -> None:
    """websockets' ``protocol_handler``: the handshake, then ``handler`` on an open
    connection; the socket closed by the end, whatever happened."""
    try:
        await connection.run_handshake(process_request)
        if connection.protocol.state is not OPEN:
            connection.transport.abort()
            return
        server.all_connections.add(connection)
        connection.start_keepalive()
        try:
            async with connection:
                await handler(connection)
        except Exception:
            connection.logger.error("connection handler failed", exc_info=True)
        finally:
            server.all_connections.discard(connection)
    except Exception:
        # Don't leak connections when the opening handshake times out or an
        # unexpected error occurs (websockets' words).
        connection.transport.abort()
    finally:
        # This task, registered by connection_made; found on the connection's loop,
        # not the running loop's look-up (a getpid syscall on 3.11).
        server.handler_tasks.discard(asyncio.current_task(connection.loop))


async def answer(connection: BambooConnection, process_request: ProcessRequest) -> None:
    """websockets' ``ServerConnection.handshake``: the request's answer, from
    ``process_request`` or else the upgrade's, sent unless the connection is gone."""
    await connection.request_or_loss()
    request = connection.request
    if request is None or connection.transport.is_closing():  # the peer is gone
        return
    protocol = connection.protocol
    try:
        response = await process_request(connection, request)
    except Exception as exc:
        protocol.handshake_exc = exc
        connection.logger.error("process_request failed", exc_info=True)
        response = protocol.reject(
            http.HTTPStatus.INTERNAL_SERVER_ERROR,
            "Failed to open a WebSocket connection.\nSee server log for more information.\n",
        )
    if response is None:
        response = protocol.accept(request)
    if request.method == "HEAD":
        # websockets' refusal of an upgrade asked with HEAD (405) had its body: the
        # status and headers only (RFC 9110 9.3.2), as every other answer to a HEAD.
        response.body = b""
    connection.response = response
    # Refused if the server began to stop during the handshake. Nothing awaited from
    # here to send_response: the check and the send are one step (websockets' words).
    if (
        response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS
        and not connection.server.is_serving()
    ):
        connection.response = protocol.reject(
            http.HTTPStatus.SERVICE_UNAVAILABLE, "Server is shutting down.\n"
        )
    if connection.state is CONNECTING:
        async with connection.send_context(expected_state=CONNECTING):
            protocol.send_response(connection.response)
