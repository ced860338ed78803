"""Text that peers wrote, made fit for an operator's terminal.

A session's title, a ``user_id`` given without auth, a message, a close frame's reason:
peers choose them, and the CLI's tables (``bamboo-session ls``, ``show``) and the
server's console log print them. A terminal acts on the control characters in what it
prints rather than showing them: an escape sequence retitled its window (OSC 0),
recoloured or erased what was printed (CSI: a carriage return and an erase made a row
say something else), or, where the terminal allows it, wrote the clipboard (OSC 52).
And it shows the invisible characters as nothing: two titles or user ids that differ
only by a zero-width space looked the same, and one made only of such characters looked
empty. :func:`shown` prints each as a visible escape (``\\x1b``, ``\\u200b``) instead,
and :func:`controls_shown` does so for every text field of a console log line. JSON
output escapes C0 controls itself, but writes DEL, C1 controls and the invisible
characters below as they are: :func:`json_shown` escapes those too (``\\u009b``), the
same JSON, the same data.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# The invisible characters: every format character (Unicode general category Cf: the
# bidi embeddings, overrides, isolates and marks, zero-width space, word joiner, soft
# hyphen, the invisible operators, the interlinear annotation marks, the tags, ...) and
# every other default-ignorable code point (DerivedCoreProperties.txt: the variation
# selectors, the Hangul fillers, the combining grapheme joiner, unassigned ones), as of
# Unicode 15; tests/test_attack_cli_invisible.py checks the Cf ones against this
# Python's unicodedata. The tags, which spell ASCII unseen ("ASCII smuggling"), are
# escaped wherever they are: only three flags (England, Scotland, Wales) use them.
# Not counted here: the line and paragraph separators, added below.
_HIDDEN = (
    "\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
# The line and paragraph separators (U+2028, U+2029), which some terminals and viewers
# break a line at.
_SEPARATORS = "\u2028\u2029"
# Of the invisible ones, those that legitimate text puts right after a visible
# character: the joiners (U+200C ZWNJ in Persian and Indic words, U+200D ZWJ in emoji
# sequences, 👩‍💻, and Indic conjuncts) and the variation selectors (❤️ is U+2764
# U+FE0F; U+E0100 and on in Japanese names; Mongolian's own). :func:`shown` keeps one (a
# selector and a ZWJ: ❤️‍🔥) after a visible character that is not ASCII, and a U+FE0F
# of a keycap (1️⃣); anywhere else, and after ASCII ("al\u200dice" is not "alice"), it is
# escaped. Between two characters that are not ASCII, a kept joiner can make two texts
# look alike, but so can a Cyrillic a (U+0430) for a Latin one: what is only ASCII to the eye is
# never two texts.
_JOINERS = "\u200c\u200d"
_SELECTORS = "\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef"
_KEPT = (
    f"(?<=[^\x00-\x9f\\s{_HIDDEN}{_SEPARATORS}])(?:[{_SELECTORS}]\u200d?|[{_JOINERS}])"
    "|(?<=[0-9#*])\ufe0f(?=\u20e3)"
)
# C0 controls, DEL, C1 controls (0x9b is a CSI of its own), and the invisible ones
# above. A message's own line breaks and tabs are its text (``lines=True``); in a table
# cell or a log field they are not.
_ESCAPED = f"\x00-\x1f\x7f-\x9f{_HIDDEN}{_SEPARATORS}"
# A backslash before what could read as an escape (``x``, ``u``, ``U``, another
# backslash, or a character escaped) is doubled: typed ``Pay\u200broll`` looked exactly
# like ``Pay`` U+200B ``roll`` escaped. Elsewhere (``C:\al``) it reads as itself.
_BACKSLASH = f"\\\\(?=[\\\\xuU{_ESCAPED}])"
_CONTROLS = re.compile(f"[\\\\{_ESCAPED}]")
_SHOWN = re.compile(f"({_KEPT})|{_BACKSLASH}|[{_ESCAPED}]")
_SHOWN_BUT_LINES = re.compile(
    f"({_KEPT})|{_BACKSLASH}|[\x00-\x08\x0b-\x1f\x7f-\x9f{_HIDDEN}{_SEPARATORS}]"
)
# What msgspec's JSON writes unescaped of them: only ever inside a string. JSON is read
# back as the same data, so every one is escaped there, the joiners too.
_CONTROLS_JSON_KEEPS = re.compile(f"[\x7f-\x9f{_HIDDEN}{_SEPARATORS}]")


def shown(text: str, *, lines: bool = False) -> str:
    """``text`` with each control and invisible character as an escape (``\\x1b``,
    ``\\u202e``, ``\\U000e0041``), but the joiners and selectors that belong where
    they are; and a backslash before what could read as an escape as ``\\\\``, so no
    two texts are shown alike."""
    return (_SHOWN_BUT_LINES if lines else _SHOWN).sub(_escaped, text)


def json_shown(encoded: bytes) -> str:
    """JSON text with each control and invisible character its encoder left as it is
    escaped (``\\u009b``; ``\\udb40\\udc41`` beyond U+FFFF): it decodes to the same
    values."""
    return _CONTROLS_JSON_KEEPS.sub(_json_escaped, encoded.decode())


def _json_escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def _escaped(match: re.Match[str]) -> str:
    kept = match.group(1)
    if kept is not None:
        return kept
    if match.group() == "\\":
        return "\\\\"
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


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
