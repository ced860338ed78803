"""What a WebSocket upgrade negotiates: the subprotocol (the codec) the server picks
from the client's offer (websockets' ``select_subprotocol`` hook; a refusal names those
it speaks), and the check of the client's extension offer, which a malformed
``Sec-WebSocket-Extensions`` header fails whether compression is on or off (both
refusals worded for the peer by server/http_refusals.py)."""

from __future__ import annotations

from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.headers import parse_extension
from websockets.server import ServerProtocol
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


def check_extension_offer(protocol: ServerProtocol) -> None:
    """Has ``protocol`` parse the client's ``Sec-WebSocket-Extensions`` even when it
    offers no extension itself (no ``--compression``). websockets parses that header
    only to match it against the extensions it offers: with compression on, a malformed
    one was refused (400), with it off the same request was upgraded, the header never
    read. A malformed header is a bad request either way (RFC 9110 15.5.1); an offer
    that parses but that the server does not take (any with compression off, a
    permessage-deflate one whose parameters it declines) is ignored, as RFC 6455 9.1
    lets a server do, and the upgrade goes on without it. The check runs where
    websockets' own would (``process_extensions``, after the key, version and origin
    checks), so a request at fault in two ways gets the same refusal either way."""
    if protocol.available_extensions:
        return  # websockets parses the header itself, and refuses what does not parse
    negotiate = protocol.process_extensions

    def process_extensions(headers: Headers) -> tuple[str | None, list[Extension]]:
        for value in headers.get_all("Sec-WebSocket-Extensions"):
            parse_extension(value)  # raises InvalidHeaderFormat, refused as not well formed
        return negotiate(headers)

    protocol.process_extensions = process_extensions  # type: ignore[method-assign]
