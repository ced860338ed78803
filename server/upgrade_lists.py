"""The ``Connection`` and ``Upgrade`` headers of a WebSocket upgrade, read as the lists
they are: comma-separated elements, compared without regard to case, empty elements
ignored (RFC 9110 5.6.1, 7.6.1, 7.8; RFC 6455 4.2.1: ``Upgrade`` containing
``websocket``, ``Connection`` including ``Upgrade``).

websockets 17.4 reads ``Connection`` as a list, but refuses a value with no element in
it (an empty ``Connection:`` line beside ``Connection: Upgrade``: 400), and takes an
``Upgrade`` of exactly one element, ``websocket``, so that ``Upgrade: websocket, h2c``
was refused (426) though it names the protocol asked for. :func:`as_lists_read` hands
websockets' checks the request as those lists read: values with no element left out,
and an ``Upgrade`` list that names ``websocket`` among well-formed protocols given as
``websocket`` alone (the protocol the 101 switches to, RFC 9110 7.8). What RFC 6455
refuses is still refused, by websockets and in its order: no ``upgrade`` among the
``Connection`` options, no ``websocket`` among the protocols (426), a malformed element
in either header (400).
"""

from __future__ import annotations

import re

from websockets.datastructures import Headers
from websockets.http11 import Request

CONNECTION = "Connection"
UPGRADE = "Upgrade"
_NAMES = (CONNECTION.lower(), UPGRADE.lower())
# A list header's value with no element in it: RFC 9110 5.6.1's empty list elements
# (commas, optional whitespace) and nothing else, an empty value included.
NO_ELEMENT = re.compile(r"[ \t,]*")
# An element of Upgrade: protocol-name ["/" protocol-version], each a token (RFC 9110 7.8).
_PROTOCOL = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:/[-!#$%&'*+.^_`|~0-9a-zA-Z]+)?")


def as_lists_read(request: Request) -> Request:
    """``request`` as websockets' upgrade checks are to see it: itself when they read
    its ``Connection`` and ``Upgrade`` as the lists do (the common case, no copy), else
    a copy whose ``Connection`` values with no element are left out, and whose
    ``Upgrade`` is ``websocket`` when its list names it among well-formed protocols.
    (Two ``Upgrade`` lines are refused before this, request_gate.py: one value at most.)"""
    headers = request.headers
    connection = headers.get_all(CONNECTION)
    upgrade = headers.get_all(UPGRADE)
    empty = [value for value in connection if NO_ELEMENT.fullmatch(value)]
    if not empty and len(upgrade) == 1 and upgrade[0].lower() == "websocket":
        return request
    if len(upgrade) == 1 and _names_websocket(upgrade[0]):
        upgrade = ["websocket"]
    kept = [(name, value) for name, value in headers.raw_items() if name.lower() not in _NAMES]
    kept += [(CONNECTION, value) for value in connection if value not in empty]
    kept += [(UPGRADE, value) for value in upgrade]
    return Request(request.path, Headers(kept))


def elements(values: list[str]) -> set[str]:
    """The elements of a list header's lines, without regard to case, empty ones left
    out (RFC 9110 5.6.1)."""
    return {element.strip(" \t").lower() for value in values for element in value.split(",")} - {""}


def _names_websocket(value: str) -> bool:
    """Whether ``value``, an ``Upgrade`` list, names ``websocket`` (in any case), every
    one of its elements a protocol; empty elements are ignored."""
    protocols = [element.strip(" \t") for element in value.split(",")]
    protocols = [protocol for protocol in protocols if protocol]
    if not all(_PROTOCOL.fullmatch(protocol) for protocol in protocols):
        return False  # malformed: websockets refuses it (400), in its words
    return any(protocol.lower() == "websocket" for protocol in protocols)
