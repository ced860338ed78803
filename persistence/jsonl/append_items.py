"""An append's items made ready for the log writer (the hot path of appends.py, as plain
functions): the fresh ones as stored events, with their seqs and ``ts`` (duplicates of
the session's key window split off, each answered with its original's seq), and those
events as the log lines of a :class:`~.batch.Batch`, with where each message's line is
among them (the message index's entries, once written)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import NOT_MESSAGES, MessageEvent, StoredEvent

from ..base import Appended, AppendItem
from ..events import completed_event
from ..keys import KeyWindow, split_duplicates
from .batch import Batch


def to_store(
    items: Sequence[AppendItem], next_seq: int, window: KeyWindow | None, now: datetime
) -> tuple[list[StoredEvent], list[Appended]]:
    """The items' fresh events as stored, and what each item became. A function of
    its own so that nothing of the split outlives it: what an append in flight holds
    until its commit, the cycle collector walks again and again. No ``window``: no
    item has a key (the caller's check), so none is a duplicate and there is nothing
    to split (most appends: an agent's lone event)."""
    if window is None:
        if len(items) == 1:
            event, key = items[0]
            seq = next_seq + 1
            return [StoredEvent(seq, now, completed_event(event), key)], [Appended(seq)]
        stored = [
            StoredEvent(seq, now, completed_event(event), key)
            for seq, (event, key) in enumerate(items, next_seq + 1)
        ]
        return stored, [Appended(event.seq) for event in stored]
    fresh, results = split_duplicates(items, next_seq, window)
    if len(fresh) == 1:  # most appends: one event (no comprehension's frame)
        seq, event, key = fresh[0]
        return [StoredEvent(seq, now, completed_event(event), key)], results
    stored = [StoredEvent(seq, now, completed_event(event), key) for seq, event, key in fresh]
    return stored, results


def batch_of(stored: list[StoredEvent], results: list[Appended], imported: bool) -> Batch:
    """The events as log lines, with where each message's line is among them;
    ``results``: what the append's future resolves to once they are written."""
    if len(stored) == 1:  # most appends: one event
        event = stored[0]
        line = encode_stored_event(event) + b"\n"
        if type(event.event) not in NOT_MESSAGES and isinstance(event.event, MessageEvent):
            return Batch(stored, line, [(event.seq, 0, len(line) - 1)], imported, results)
        return Batch(stored, line, [], imported, results)
    lines = [encode_stored_event(event) + b"\n" for event in stored]
    messages = []
    offset = 0
    for event, line in zip(stored, lines, strict=True):
        if type(event.event) not in NOT_MESSAGES and isinstance(event.event, MessageEvent):
            messages.append((event.seq, offset, len(line) - 1))
        offset += len(line)
    return Batch(stored, b"".join(lines), messages, imported, results)
