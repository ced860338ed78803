"""Which codec a WebSocket upgrade speaks: the subprotocol the server picks from the
client's offer (websockets' ``select_subprotocol`` hook); a refusal names those it
speaks (worded for the peer by server/http_refusals.py)."""

from __future__ import annotations

from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import NegotiationError
from websockets.typing import Subprotocol

from bamboo_session.protocol.codec import CODECS_BY_SUBPROTOCOL, SUBPROTOCOLS


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
