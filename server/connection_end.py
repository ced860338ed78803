"""What a connection leaves behind when it ends, whatever ended it: its session, its
user's count and its expiry timer let go, its close counted by code, one summary line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from .connection import Connection

# The connection's own logger: "connection closed" is its line.
log = structlog.get_logger("bamboo_session.connection")


def end_connection(connection: Connection) -> None:
    """Detaches, counts the close and logs the summary (the handler's last step)."""
    _detach(connection)
    _count_close(connection)
    _log_summary(connection)


def _detach(connection: Connection) -> None:
    if connection.expiry is not None:
        connection.expiry.cancel()
    outbox, services = connection.outbox, connection.services
    if outbox is not None:
        outbox.abandon("disconnected")
    release_user_count(connection)
    if outbox is not None and connection.session_id is not None:
        services.manager.detach(connection.session_id, connection.connection_id)


def release_user_count(connection: Connection) -> None:
    """The connection stops counting against its user's cap: as its close frame goes
    out (``on_close_sent``), so that a user who reconnects on seeing the close finds
    the room, or at its end if it had none (the socket dropped); once."""
    user, connection.counted_user = connection.counted_user, None
    if user is not None:
        connection.services.user_connections.release(user, connection.connection_id)


def _count_close(connection: Connection) -> None:
    """Every close the server started, by code: refusals during the handshake
    (4401, 4403, 4404, 4408, 1008, 4429, 1013) as well as later ones."""
    protocol = connection.ws.protocol
    sent = protocol.close_sent
    if sent is not None and not protocol.close_rcvd_then_sent:
        connection.services.metrics.closes.labels(code=str(sent.code)).inc()


def _log_summary(connection: Connection) -> None:
    ws = connection.ws
    log.info(
        "connection closed",
        close_code=ws.close_code,
        close_reason=ws.close_reason,
        frames_in=connection.frames_in,
        frames_out=connection.frames_out,
        read_wait=round(ws.read_waits.waited, 3),
        page_wait=round(connection.page_waited, 3),
        seconds=round(time.monotonic() - connection.started, 3),
        **_unanswered_close(connection),
    )


def _unanswered_close(connection: Connection) -> dict[str, object]:
    """The close the server sent, when the peer never answered it: ``close_code`` is
    then 1006 (no close received), and the line would not say that the server cut the
    connection, nor why (a peer that reads nothing, closed 4429 for its full send
    queue, was logged as 1006 and nothing more)."""
    protocol = connection.ws.protocol
    sent = protocol.close_sent
    if sent is None or protocol.close_rcvd is not None:
        return {}
    return {"server_close_code": int(sent.code), "server_close_reason": sent.reason}
