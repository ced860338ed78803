"""Idempotency keys: the window of a session's recent keys, and how a batch of keyed
items splits into fresh appends and duplicates. Shared by the local backends (Redis
does the same inside its append script)."""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence
from typing import Final, TypeVar

from .base import KEY_WINDOW, Appended

T = TypeVar("T")

# What one remembered key costs besides its characters, on CPython 3.11 (64-bit): the
# str object's header (49), its entry in the order deque (a 2-tuple, 56; its seq, an
# int, 28; the deque's slot, 8) and its dict slot (16 to 24, up to 38 a key just after
# the dict grew). Measured worst over a window's growth to KEY_WINDOW keys: 179 (as
# tracemalloc counts, what was asked of the allocator); its blocks round each object
# up to 16 bytes (the tuple to 64, the int to 32, the str by up to 15): 206 held.
# An estimate for byte budgets, not an exact count.
KEY_OVERHEAD_BYTES: Final = 208


# How much more the header of a str that is not ASCII holds than an ASCII one's (49),
# with its UTF-8 copy's terminator: at most 72 + 4 - 49 + 1.
WIDE_STR_EXTRA_BYTES: Final = 32
# A str's width is its widest character's: 1 byte up to U+00FF, 2 up to U+FFFF, else 4.
# Searched for, not found with max(key), which makes a str of each character past
# U+00FF (13 us a key of 128 emoji, at each add and each forget; the search takes 2).
_BEYOND_LATIN1: Final = re.compile(r"[^\x00-\xff]")
_ASTRAL: Final = re.compile(r"[\U00010000-\U0010ffff]")


def key_cost(key: str) -> int:
    """The memory one remembered key holds, estimated from its value alone (the same
    when it is forgotten as when it was added). An ASCII key holds a byte a character.
    Any other holds 1, 2 or 4 bytes a character, by the widest of them, and, once it
    was encoded (written to a log, sent), a UTF-8 copy of itself too. Its length alone
    counted a key of 128 emoji as 128 bytes, which holds 1,101 once written; a key of
    ASCII and one emoji holds 4 bytes a character, twice its UTF-8."""
    if key.isascii():
        return len(key) + KEY_OVERHEAD_BYTES
    width = 1 if _BEYOND_LATIN1.search(key) is None else 2 if _ASTRAL.search(key) is None else 4
    return width * len(key) + len(key.encode()) + WIDE_STR_EXTRA_BYTES + KEY_OVERHEAD_BYTES


class KeyWindow:
    """Idempotency keys of a session's last ``size`` appends, each with the seq it was
    first accepted with. ``bytes`` estimates the memory the keys hold."""

    __slots__ = ("_order", "_seq_by_key", "bytes", "size")

    def __init__(self, size: int = KEY_WINDOW) -> None:
        self.size = size
        self.bytes = 0
        self._seq_by_key: dict[str, int] = {}
        self._order: collections.deque[tuple[int, str]] = collections.deque()

    def __len__(self) -> int:
        return len(self._seq_by_key)

    def seq_of(self, key: str, next_seq: int) -> int | None:
        """The seq ``key`` was accepted with, if that is within the window as counted
        at an append that would get ``next_seq``."""
        seq = self._seq_by_key.get(key)
        if seq is not None and next_seq - seq <= self.size:
            return seq
        return None

    def add(self, key: str, seq: int) -> None:
        self._seq_by_key[key] = seq
        self._order.append((seq, key))
        self.bytes += key_cost(key)

    def discard_from(self, seq: int) -> None:
        """Forget keys accepted at ``seq`` or later (their appends failed)."""
        order = self._order
        while order and order[-1][0] >= seq:
            _, key = order.pop()
            self.bytes -= key_cost(key)
            if self._seq_by_key.get(key, 0) >= seq:
                del self._seq_by_key[key]

    def forget_before(self, last_seq: int) -> None:
        """Drop keys that fell out of the window once the log reached ``last_seq``."""
        horizon = last_seq - self.size
        order = self._order
        while order and order[0][0] <= horizon:
            _, key = order.popleft()
            self.bytes -= key_cost(key)
            if self._seq_by_key.get(key, 0) <= horizon:
                self._seq_by_key.pop(key, None)


def split_duplicates(
    items: Sequence[tuple[T, str | None]], last_seq: int, window: KeyWindow
) -> tuple[list[tuple[int, T, str | None]], list[Appended]]:
    """The items to append, each with its seq (from ``last_seq + 1``), and what every
    item became. A key seen in the window, or earlier in this same batch, makes a
    duplicate of its first seq; the window is counted at each item, not at the batch's
    start. The caller adds the fresh keys to the window once they are stored."""
    fresh: list[tuple[int, T, str | None]] = []
    results: list[Appended] = []
    in_batch: dict[str, int] = {}
    for item, key in items:
        next_seq = last_seq + len(fresh) + 1
        if key is not None:
            seen = in_batch.get(key)
            if seen is None:
                seen = window.seq_of(key, next_seq)
            if seen is not None:
                results.append(Appended(seen, duplicate=True))
                continue
            in_batch[key] = next_seq
        fresh.append((next_seq, item, key))
        results.append(Appended(next_seq))
    return fresh, results
