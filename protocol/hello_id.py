"""A ``hello`` whose ``id`` is no request id, read without it.

PROTOCOL.md's ``hello`` has no ``id``: there it is an unknown field, which a client
may fill with anything and the server must ignore. This server reads one only to echo
it in an error about the hello (docs/protocol.md, hello), so one it could not echo (a
string over 128 characters, a float, an array) is left out instead of refusing the
hello (close 1008). A request of any other type with such an id is still refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

from .frames import Hello

# How msgspec ends its refusal of a frame's own ``id``.
_AT_ID: Final = "- at `$.id`"
_AT_TYPE: Final = "- at `$.type`"  # a frame that is no hello
# Hello's fields but the id, copied from a hello read with any id.
_FIELDS: Final = tuple(name for name in Hello.__struct_fields__ if name != "id")


class _HelloOfAnyId(Hello, tag="hello"):
    """A hello whose id is kept as its bytes, never built: an array of 500,000 items
    there is skipped, as an unknown field is."""

    id: msgspec.Raw = msgspec.Raw(b"")  # type: ignore[assignment]


class HelloIdReader:
    """Reads again, without its id, a hello refused for its id alone."""

    def __init__(self, make_decoder: Callable[[Any], Any]) -> None:
        self._decoder = make_decoder(_HelloOfAnyId)

    def decode(self, raw: bytes | str, reason: str) -> Hello | None:
        """The hello ``raw`` holds, without its id, when ``reason`` (the typed decoder's
        refusal of ``raw``) is about its id; None when it is not, or ``raw`` is no
        hello (the caller raises its refusal again, from its own ``except``: raised
        here, from a frame that holds it, it would be a reference cycle holding ``raw``
        until the cycle collector runs: a burst of refused 1 MiB frames peaked at 25
        MB). A hello with another fault is refused for that one, with msgspec's errors
        as the typed decoder raises them."""
        if not reason.endswith(_AT_ID):
            return None
        try:
            read = self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if str(exc).endswith(_AT_TYPE):
                return None
            raise
        return Hello(**{name: getattr(read, name) for name in _FIELDS})
