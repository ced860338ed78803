"""The JSONL storage's two memory caches, each bounded in bytes as well as in count:

- :class:`KeyWindows`: the idempotency-key windows of recently written sessions. A
  window is read from the log (seqs and keys only) at a session's first keyed append,
  and dropped again, least recently used first, past ``max_windows`` windows or
  ``max_bytes`` of keys; never while the session has appends in flight (the window
  holds their keys).
- :class:`MessageCache`: the newest messages of recently used sessions, decoded, so
  that a page of recent history needs no disk read, each weighed by its bytes or,
  where they hold more decoded, its strings. Each session keeps its newest
  messages up to a 32nd of the budget; whole sessions go, least recently used first,
  past the budget. The storage adds messages as they are written, in order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence

from bamboo_session.protocol.codec import free_form_values
from bamboo_session.protocol.free_form import FREE_VALUE_BYTES, held_by_strings
from bamboo_session.protocol.models import Message

from ..events import count_within
from ..keys import KeyWindow

SESSION_SHARE = 32  # a session's tail holds at most 1/SESSION_SHARE of the budget
# What holding things costs besides the bytes they count (estimates, for the budgets):
# a window's object, dict and deque and its entry here (an empty KeyWindow holds 1,224:
# its deque's first block is 528 of it); a tail's entry, object and deque; a decoded
# Message (and FREE_VALUE_BYTES per value of its metadata and tool arguments, which
# its bytes do not bound: protocol/free_form.py).
WINDOW_BYTES = 1536
TAIL_BYTES = 1024
MESSAGE_BYTES = 256


class KeyWindows:
    def __init__(self, max_windows: int, max_bytes: int) -> None:
        self.max_windows = max_windows
        self.max_bytes = max_bytes
        self.bytes = 0
        self._windows: collections.OrderedDict[str, KeyWindow] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def get(self, session_id: str) -> KeyWindow | None:
        window = self._windows.get(session_id)
        if window is not None:
            self._windows.move_to_end(session_id)
        return window

    def put(self, session_id: str, window: KeyWindow, busy: Callable[[str], bool]) -> None:
        """Keep ``window``; drop old ones past the bounds, unless ``busy(session_id)`` (or
        the one just kept: its append is about to use it)."""
        self.drop(session_id)
        self._windows[session_id] = window
        self.bytes += window.bytes + WINDOW_BYTES
        self.trim(lambda other: other == session_id or busy(other))

    def add(self, session_id: str, window: KeyWindow, key: str, seq: int) -> None:
        before = window.bytes
        window.add(key, seq)
        if self._windows.get(session_id) is window:
            self.bytes += window.bytes - before

    def forget_before(self, session_id: str, last_seq: int) -> None:
        window = self._windows.get(session_id)
        if window is not None:
            before = window.bytes
            window.forget_before(last_seq)
            self.bytes += window.bytes - before

    def discard_from(self, session_id: str, seq: int) -> None:
        window = self._windows.get(session_id)
        if window is not None:
            before = window.bytes
            window.discard_from(seq)
            self.bytes += window.bytes - before

    def drop(self, session_id: str) -> None:
        window = self._windows.pop(session_id, None)
        if window is not None:
            self.bytes -= window.bytes + WINDOW_BYTES

    def trim(self, busy: Callable[[str], bool]) -> None:
        """Drop the least recently used windows past the bounds (not busy ones)."""
        if len(self._windows) <= self.max_windows and self.bytes <= self.max_bytes:
            return
        for session_id in list(self._windows):
            if not busy(session_id):
                self.drop(session_id)
            if len(self._windows) <= self.max_windows and self.bytes <= self.max_bytes:
                return


class _Tail:
    __slots__ = ("bytes", "items", "start")

    def __init__(self, start: int) -> None:
        self.start = start  # the history index of items[0]
        self.items: collections.deque[tuple[Message, int]] = collections.deque()
        self.bytes = TAIL_BYTES

    @property
    def end(self) -> int:
        return self.start + len(self.items)


class MessageCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.session_bytes = max_bytes // SESSION_SHARE
        self.bytes = 0
        self._tails: collections.OrderedDict[str, _Tail] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._tails)

    def extend(self, session_id: str, first: int, messages: Sequence[tuple[Message, int]]) -> None:
        """Messages ``first ..`` of the session's history, with their encoded sizes:
        kept if they continue the cached tail (else the tail starts again at ``first``)."""
        if self.max_bytes == 0:
            return
        tail = self._tails.get(session_id)
        if tail is None or tail.end != first:
            self.drop(session_id)
            tail = self._tails[session_id] = _Tail(first)
            self.bytes += tail.bytes
        else:
            self._tails.move_to_end(session_id)
        for message, size in messages:
            # Its bytes, or what its strings hold decoded where they hold more.
            size = max(size, held_by_strings(message))
            size += MESSAGE_BYTES + free_form_values(message) * FREE_VALUE_BYTES
            tail.items.append((message, size))
            tail.bytes += size
            self.bytes += size
        while tail.items and tail.bytes > self.session_bytes:
            _message, size = tail.items.popleft()
            tail.start += 1
            tail.bytes -= size
            self.bytes -= size
        while self.bytes > self.max_bytes and self._tails:
            self.drop(next(iter(self._tails)))

    def start(self, session_id: str, first: int) -> None:
        """An empty tail at ``first`` (a new session: its whole history is cached)."""
        self.extend(session_id, first, ())

    def get(
        self,
        session_id: str,
        start: int,
        end: int,
        max_bytes: int | None = None,
        oldest_first: bool = False,
    ) -> list[Message] | None:
        """History messages ``start .. end``, if all are cached; with ``max_bytes``,
        only the newest of them whose weights fit it (at least one), or the oldest."""
        tail = self._tails.get(session_id)
        if tail is None or start < tail.start or end > tail.end:
            return None
        self._tails.move_to_end(session_id)
        items = tail.items
        if oldest_first:
            oldest = range(start - tail.start, end - tail.start)
            end = start + count_within((items[i][1] for i in oldest), max_bytes)
        else:
            newest = range(end - tail.start - 1, start - tail.start - 1, -1)
            start = end - count_within((items[i][1] for i in newest), max_bytes)
        return [items[i][0] for i in range(start - tail.start, end - tail.start)]

    def drop(self, session_id: str) -> None:
        tail = self._tails.pop(session_id, None)
        if tail is not None:
            self.bytes -= tail.bytes
