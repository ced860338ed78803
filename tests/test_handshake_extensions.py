"""An upgrade whose ``Sec-WebSocket-Extensions`` header is malformed is refused (400,
in the server's words) whether the server runs with ``--compression`` or without; one
that parses, but offers nothing the server takes, is upgraded without it, both ways
(docs/protocol.md, Handshake). Before, the same malformed request got 400 with
compression on and 101 with it off: websockets reads the header only to match the
extensions it offers, and without compression offers none. A header with no element
(empty: old ktor clients send one) is no offer, both ways: it got 400 once the check
above ran with compression off too, and always had with it on."""

from __future__ import annotations

import asyncio

import pytest

from tests.support import run_server
from tests.test_http_refusals import KEY, STREAM, UPGRADE, VERSION, read_refusal

NOT_WELL_FORMED = "the Sec-WebSocket-Extensions header is not well formed"
MALFORMED_OFFERS = (
    b"x y",  # two tokens without a comma
    b"permessage-deflate;;",  # an empty parameter
    b'permessage-deflate; client_max_window_bits="15',  # an unclosed quoted string
    b"=",
    b", x y",  # empty elements ahead of a malformed one
)
# Values with no element: empty, blanks, only commas (RFC 9110 5.6.1.2 has a recipient
# ignore empty list elements). The header is then as good as absent.
EMPTY_OFFERS = (b"", b"   ", b"\t", b",", b" , ,\t,")
# Offers that parse: an extension the server does not speak, permessage-deflate with a
# parameter it declines (a window of 99 bits), or with one twice. Ignored, not refused.
DECLINED_OFFERS = (
    b"x-unknown",
    b"x-unknown; a=1, x-other",
    b"permessage-deflate; server_max_window_bits=99",
    b"permessage-deflate; server_no_context_takeover; server_no_context_takeover",
)
DEFLATE = b"permessage-deflate; client_max_window_bits"


def upgrade_offering(*offers: bytes, key: bytes = KEY) -> bytes:
    lines = b"".join(b"Sec-WebSocket-Extensions: %s\r\n" % offer for offer in offers)
    return STREAM + UPGRADE + VERSION + key + lines + b"\r\n"


async def answer_head(port: int, request: bytes) -> tuple[bytes, bytes]:
    """The status line and head of the server's answer to ``request``, and what follows
    the head once the server closed the connection (an upgrade's is left open, unread)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        if head.startswith(b"HTTP/1.1 101 "):
            return head, b""
        return head, await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def extensions_accepted(head: bytes) -> bytes | None:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"sec-websocket-extensions":
            return value.strip()
    return None


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compression"])
async def test_a_malformed_extension_offer_is_refused_with_compression_on_or_off(
    compression: bool,
) -> None:
    async with run_server(compression=compression) as server:
        for offer in MALFORMED_OFFERS:
            head, body = await answer_head(server.port, upgrade_offering(offer))
            error = {"code": "bad_request", "message": NOT_WELL_FORMED}
            assert read_refusal(head + body) == (400, error), offer
        # A malformed line among well-formed ones is refused as well.
        head, body = await answer_head(server.port, upgrade_offering(DEFLATE, b"x y"))
        assert read_refusal(head + body)[0] == 400
        # Checked where websockets checks it: a bad key is what a request at fault in
        # both ways is refused for, either way.
        bad_key = upgrade_offering(b"x y", key=b"Sec-WebSocket-Key: abc\r\n")
        head, body = await answer_head(server.port, bad_key)
        message = "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455 4.1)"
        assert read_refusal(head + body) == (400, {"code": "bad_request", "message": message})


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compression"])
async def test_an_empty_extensions_header_is_no_offer(compression: bool) -> None:
    async with run_server(compression=compression) as server:
        for offer in EMPTY_OFFERS:
            head, _ = await answer_head(server.port, upgrade_offering(offer))
            assert head.startswith(b"HTTP/1.1 101 "), (offer, head)
            assert extensions_accepted(head) is None, (offer, head)
        # Beside a real offer, on a line of its own: the offer is negotiated as alone.
        for offers in ((b"", DEFLATE), (DEFLATE, b" , ")):
            head, _ = await answer_head(server.port, upgrade_offering(*offers))
            assert head.startswith(b"HTTP/1.1 101 "), (offers, head)
            accepted = extensions_accepted(head) or b""
            assert accepted.startswith(b"permessage-deflate") is compression, (offers, head)
        # An empty line does not excuse a malformed one beside it.
        head, body = await answer_head(server.port, upgrade_offering(b"", b"x y"))
        error = {"code": "bad_request", "message": NOT_WELL_FORMED}
        assert read_refusal(head + body) == (400, error)


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compression"])
async def test_an_offer_the_server_does_not_take_is_ignored(compression: bool) -> None:
    async with run_server(compression=compression) as server:
        for offer in DECLINED_OFFERS:
            head, _ = await answer_head(server.port, upgrade_offering(offer))
            assert head.startswith(b"HTTP/1.1 101 "), (offer, head)
            assert extensions_accepted(head) is None, (offer, head)
        head, _ = await answer_head(server.port, upgrade_offering(b"x-unknown", DEFLATE))
        assert head.startswith(b"HTTP/1.1 101 "), head
        accepted = extensions_accepted(head)
        assert (accepted or b"").startswith(b"permessage-deflate") is compression, head
