"""An append's items made ready for the log writer (the hot path of appends.py, as plain
functions): the fresh ones as stored events, with their seqs and ``ts`` (duplicates of
the session's key window split off, each answered with its original's seq), encoded as
the log lines of one :class:`~.batch.Batch`, with where each message's line is among
them (the message index's entries, once written), and what each item became."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from bamboo_session.protocol.log_lines import encode_stored_event
from bamboo_session.protocol.models import NOT_MESSAGES, MessageEvent, StoredEvent

from ..base import Appended, AppendItem
from ..events import completed_event
from ..keys import KeyWindow, split_duplicates
from .batch import Batch


def new_batch(
    items: Sequence[AppendItem], next_seq: int, window: KeyWindow | None, now: datetime
) -> Batch:
    """The items' fresh events as one batch of log lines (none when every item is a
    duplicate), its ``results`` what each item became. One call from items to lines,
    and a function of its own so that nothing of the split outlives it: what an append
    in flight holds until its commit, the cycle collector walks again and again. No
    ``window``: no item has a key (the caller's check), so none is a duplicate and
    there is nothing to split."""
    if window is None and len(items) == 1:  # most appends: an agent's lone event
        event, key = items[0]
        seq = next_seq + 1
        if type(event) in NOT_MESSAGES or not isinstance(event, MessageEvent):
            stored = StoredEvent(seq, now, event, key)
            line = encode_stored_event(stored) + b"\n"
            return Batch([stored], line, [], False, [Appended(seq)])
        stored = StoredEvent(seq, now, completed_event(event), key)
        line = encode_stored_event(stored) + b"\n"
        return Batch([stored], line, [(seq, 0, len(line) - 1)], False, [Appended(seq)])
    if window is None:
        events = [
            StoredEvent(seq, now, completed_event(event), key)
            for seq, (event, key) in enumerate(items, next_seq + 1)
        ]
        return batch_of(events, [Appended(event.seq) for event in events], imported=False)
    fresh, results = split_duplicates(items, next_seq, window)
    events = [StoredEvent(seq, now, completed_event(event), key) for seq, event, key in fresh]
    return batch_of(events, results, imported=False)


def batch_of(stored: list[StoredEvent], results: list[Appended], imported: bool) -> Batch:
    """The events as log lines, with where each message's line is among them;
    ``results``: what the append's future resolves to once they are written."""
    lines = [encode_stored_event(event) + b"\n" for event in stored]
    messages = []
    offset = 0
    for event, line in zip(stored, lines, strict=True):
        if type(event.event) not in NOT_MESSAGES and isinstance(event.event, MessageEvent):
            messages.append((event.seq, offset, len(line) - 1))
        offset += len(line)
    return Batch(stored, b"".join(lines), messages, imported, results)
