"""What BambooClient returns besides events: pages of history and of the log, and the
:class:`Reset` marker that :meth:`BambooClient.events` yields when it could not resume."""

from __future__ import annotations

import msgspec

from ..models import Message, StoredEvent


class Reset(msgspec.Struct, frozen=True):
    """Yielded by :meth:`BambooClient.events` when a (re)connect could not resume: the
    events between ``previous_last_seq`` and ``last_seq`` were not replayed (the log's
    ``epoch`` changed, they were trimmed, or ``last_seq`` was beyond the log's end).
    Reload state with :meth:`~BambooClient.history` and
    :meth:`~BambooClient.read_events`; live events continue after ``last_seq``."""

    epoch: str
    last_seq: int
    previous_epoch: str | None
    previous_last_seq: int


class HistoryPage(msgspec.Struct, frozen=True):
    """Messages oldest first, and whether older ones exist."""

    messages: list[Message]
    has_more: bool


class EventPage(msgspec.Struct, frozen=True):
    """Events with ``seq > after_seq``, oldest first, the log's ``last_seq``, and the
    ``epoch`` of the log they were read from (None from a server that does not say)."""

    events: list[StoredEvent]
    last_seq: int
    epoch: str | None = None
