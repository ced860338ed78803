"""What a WebSocket upgrade negotiates: the subprotocol (the codec) the server picks
from the client's offer (websockets' ``select_subprotocol`` hook; a refusal names those
it speaks; a ``Sec-WebSocket-Protocol`` header with no element in it offers nothing,
as no header would: JSON), and the check of the client's extension offer, which a
malformed ``Sec-WebSocket-Extensions`` header fails whether compression is on or off
(both refusals worded for the peer by server/http_refusals.py) and an empty one
passes, as no offer at all; and ``Connection`` and ``Upgrade`` read as lists
(upgrade_lists.py) where websockets checks them."""

from __future__ import annotations

from collections.abc import Sequence
from types import MethodType

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.headers import parse_extension, parse_subprotocol
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from bamboo_session.protocol.codec import CODECS_BY_SUBPROTOCOL, SUBPROTOCOLS

from .upgrade_lists import NO_ELEMENT, as_lists_read
from .whole_frames import WholeFramesProtocol


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


class NegotiatingProtocol(WholeFramesProtocol):
    """The protocol of every connection (http_wire.py gives it this class): whole
    frames as WholeFramesProtocol reads them, and a subprotocol offer read as a list
    header. websockets parses each ``Sec-WebSocket-Protocol`` value as RFC 6455's
    ``1#token``, at least one, and refused a header with no element at all (an empty
    value, blanks, only commas) with 400, though it skips empty elements among others
    (``, bamboo.v1`` is ``bamboo.v1``). Such a header offers nothing, as no header
    would (RFC 9110 5.6.1.2: a recipient ignores empty list elements): PROTOCOL.md's
    "a client that offers no subprotocol gets JSON". A client that joins an empty
    list of offers into the header sends one, as an empty ``Sec-WebSocket-Extensions``
    is sent, and passes, already (check_extension_offer). ``Connection`` and
    ``Upgrade`` are read as lists too, before websockets checks them (upgrade_lists.py).
    A class, not a method bound to each protocol: nothing more on an idle connection."""

    def process_request(self, request: Request) -> tuple[str, str | None, str | None]:
        return super().process_request(as_lists_read(request))

    def process_subprotocol(self, headers: Headers) -> Subprotocol | None:
        offered = [
            subprotocol
            for value in headers.get_all(PROTOCOLS)
            if not NO_ELEMENT.fullmatch(value)
            for subprotocol in parse_subprotocol(value)  # raises: not well formed
        ]
        return self.select_subprotocol(offered)


PROTOCOLS = "Sec-WebSocket-Protocol"


def check_extension_offer(protocol: ServerProtocol) -> None:
    """Has ``protocol`` parse the client's ``Sec-WebSocket-Extensions`` even when it
    offers no extension itself (no ``--compression``). websockets parses that header
    only to match it against the extensions it offers: with compression on, a malformed
    one was refused (400), with it off the same request was upgraded, the header never
    read. A malformed header is a bad request either way (RFC 9110 15.5.1); an offer
    that parses but that the server does not take (any with compression off, a
    permessage-deflate one whose parameters it declines) is ignored, as RFC 6455 9.1
    lets a server do, and the upgrade goes on without it. A header with no element at
    all (empty, or only commas and blanks: old ktor clients send the header with
    nothing after the colon) offers nothing, as no header would, both ways: a recipient
    ignores empty list elements (RFC 9110 5.6.1.2), and websockets, whose grammar
    wants at least one, refused it with compression on. The check runs where
    websockets' own would (``process_extensions``, after the key, version and origin
    checks), so a request at fault in two ways gets the same refusal either way. A
    method bound to ``protocol``, not a closure: the protocol keeps it as long as the
    connection lasts, and a closure's function and cells cost every idle connection
    some 250 bytes more (h383)."""
    checked = MethodType(_checked_extensions, protocol)
    protocol.process_extensions = checked  # type: ignore[method-assign]


def _checked_extensions(
    protocol: ServerProtocol, headers: Headers
) -> tuple[str | None, list[Extension]]:
    """websockets' ``process_extensions`` once the offer is checked (check_extension_offer)."""
    values = headers.get_all(EXTENSIONS)
    offers = [value for value in values if not NO_ELEMENT.fullmatch(value)]
    if len(offers) < len(values):
        headers = _with_extension_offers(headers, offers)
    if not protocol.available_extensions:
        for value in offers:  # websockets parses them only when it offers some
            parse_extension(value)  # raises InvalidHeaderFormat: not well formed
    return type(protocol).process_extensions(protocol, headers)


EXTENSIONS = "Sec-WebSocket-Extensions"


def _with_extension_offers(headers: Headers, offers: list[str]) -> Headers:
    """A copy of ``headers`` whose ``Sec-WebSocket-Extensions`` values are ``offers``."""
    kept = [
        (name, value) for name, value in headers.raw_items() if name.lower() != EXTENSIONS.lower()
    ]
    return Headers(kept + [(EXTENSIONS, value) for value in offers])
