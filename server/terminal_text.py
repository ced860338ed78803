"""Text that peers wrote, made fit for an operator's terminal.

A session's title, a ``user_id`` given without auth, a message, a close frame's reason:
peers choose them, and the CLI's tables (``bamboo-session ls``, ``show``) and the
server's console log print them. A terminal acts on the control characters in what it
prints rather than showing them: an escape sequence retitled its window (OSC 0),
recoloured or erased what was printed (CSI: a carriage return and an erase made a row
say something else), or, where the terminal allows it, wrote the clipboard (OSC 52).
:func:`shown` prints each as a visible escape (``\\x1b``) instead, and
:func:`controls_shown` does so for every text field of a console log line. JSON output
escapes C0 controls itself, but writes DEL, C1 controls, bidi controls and marks and
the other invisible characters below as they are: :func:`json_shown` escapes those too
(``\\u009b``), the same JSON, the same data.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# The invisible characters that change how the text around them reads: the bidi
# embeddings, overrides and isolates (U+202A-202E, U+2066-2069) and the marks that do
# the same unseen (LRM U+200E, RLM U+200F, ALM U+061C), the byte order mark (U+FEFF, a
# zero-width no-break space), and the line and paragraph separators (U+2028, U+2029),
# which some terminals and viewers break a line at.
_INVISIBLE = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
# C0 controls, DEL, C1 controls (0x9b is a CSI of its own), and the invisible ones
# above. A message's own line breaks and tabs are its text (``lines=True``); in a table
# cell or a log field they are not.
_CONTROLS = re.compile(f"[\x00-\x1f\x7f-\x9f{_INVISIBLE}]")
_CONTROLS_BUT_LINES = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_INVISIBLE}]")
# What msgspec's JSON writes unescaped of them: only ever inside a string.
_CONTROLS_JSON_KEEPS = re.compile(f"[\x7f-\x9f{_INVISIBLE}]")


def shown(text: str, *, lines: bool = False) -> str:
    """``text`` with each control character as an escape (``\\x1b``, ``\\u202e``)."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_escaped, text)


def json_shown(encoded: bytes) -> str:
    """JSON text with each control character its encoder left as it is escaped
    (``\\u009b``): it decodes to the same values."""
    return _CONTROLS_JSON_KEEPS.sub(_json_escaped, encoded.decode())


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def controls_shown(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor for the console log: its text fields as :func:`shown`
    makes them (the console renderer writes a string as it is; other values it writes
    by ``repr``, which escapes them already)."""
    for name, value in event.items():
        if isinstance(value, str) and _CONTROLS.search(value):
            event[name] = shown(value)
    return event
