"""What every backend does to events the same way: complete a published message, count
and check what a session stores, and cut pages of events and messages by count and by
bytes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from bamboo_session.protocol.models import NOT_MESSAGES, AnyAgentEvent, MessageEvent, StoredEvent

from .errors import SessionFull, UserFull


def completed_event(event: AnyAgentEvent) -> AnyAgentEvent:
    """A ``message`` event's message gets its ``id`` and ``created_at`` where absent."""
    if type(event) not in NOT_MESSAGES and isinstance(event, MessageEvent):
        message = event.message.completed()
        if message is not event.message:
            return msgspec.structs.replace(event, message=message)
    return event


def stored_size(event_json: bytes, key: str | None) -> int:
    """What one event adds to its session's ``stored_bytes`` in the stores that count
    what they hold of it (memory, SQLite, Redis): its JSON and its key, in bytes."""
    if key is None:
        return len(event_json)
    return len(event_json) + (len(key) if key.isascii() else len(key.encode()))


def check_room(stored: int, adding: int, cap: int | None) -> None:
    """SessionFull unless ``adding`` more bytes keep the session within ``cap``."""
    if cap is not None and stored + adding > cap and adding:
        raise SessionFull(stored, adding, cap)


def check_user_room(user_id: str | None, stored: int, adding: int, cap: int | None) -> None:
    """UserFull unless ``adding`` more bytes keep the sessions of ``user_id`` (which
    hold ``stored``) within ``cap``; sessions without a user are not counted."""
    if cap is not None and user_id is not None and stored + adding > cap and adding:
        raise UserFull(user_id, stored, adding, cap)


class UserBytes:
    """What the sessions of each user hold, summed, in one process's memory (the memory
    and JSONL stores, which one process owns): a store adds what its appends and
    imports store, and takes away a session's bytes when it forgets it. Sessions
    without a user are not counted."""

    __slots__ = ("_totals",)

    def __init__(self) -> None:
        self._totals: dict[str, int] = {}

    def of(self, user_id: str | None) -> int:
        return 0 if user_id is None else self._totals.get(user_id, 0)

    def add(self, user_id: str | None, delta: int) -> None:
        if user_id is None or not delta:
            return
        total = self._totals.get(user_id, 0) + delta
        if total > 0:
            self._totals[user_id] = total
        else:
            self._totals.pop(user_id, None)


def within_bytes(events: Sequence[StoredEvent], max_bytes: int) -> list[StoredEvent]:
    """The longest prefix of ``events`` within ``max_bytes`` of encoded events, and
    always the first event: a page never comes back empty because one event is big."""
    total = 0
    for count, event in enumerate(events):
        total += event.size
        if total > max_bytes and count:
            return list(events[:count])
    return list(events)


def count_within(sizes: Iterable[int], max_bytes: int | None) -> int:
    """How many items, taken in the order of ``sizes`` (newest first for a page read
    backwards, oldest first for one read forwards), fit in ``max_bytes``: at least one
    if there is one (None: all). Stops at the first past the budget, so a lazy
    ``sizes`` reads no further."""
    count = total = 0
    for size in sizes:
        total += size
        if max_bytes is not None and total > max_bytes and count:
            break
        count += 1
    return count


def page_bounds(count: int, limit: int, before: int | None) -> tuple[int, int]:
    """``(start, end)`` of the newest ``limit`` items before index ``before`` (default:
    the end) of ``count`` items."""
    end = count if before is None else max(0, min(before, count))
    return max(0, end - max(limit, 0)), end


def forward_bounds(count: int, start: int, limit: int) -> tuple[int, int]:
    """``(start, end)`` of the oldest ``limit`` items from index ``start`` on of
    ``count`` items (a ``start`` past the end: an empty range at the end)."""
    start = max(0, min(start, count))
    return start, min(count, start + max(limit, 0))
