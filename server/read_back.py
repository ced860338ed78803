"""Replays, and live events read back with them: a :class:`Replay` is a placeholder in
a connection's queue for the session's events in ``(after, through]``, read from the
actor's ring or from storage when the writer comes to it; :func:`read_back` makes room
in a queue behind a replay being sent by leaving its events to be read that way too.

Why: live events queue behind a resume's replay, and a replay read from the store (a
Redis one) or waiting for its peer's read allowance may last longer than the queue
does at the session's rate. Closing such a reader with 4429, however fast it reads,
left a reader far behind on a busy session unable ever to catch up (it got a page or
so per connection: bench/chaos_soak.py on Redis). Read back instead, the same frames
come in the same order, each once, and the queue's bounds hold.
"""

from __future__ import annotations

from typing import TypeVar

from .outbound import EventOutbound


class Replay:
    """A placeholder in an outbox: send the session's events in ``(after, through]``
    here, read from the actor's ring or from storage. ``through`` may grow until the
    replay is sent whole: events queued behind it are read with it (:func:`read_back`)."""

    __slots__ = ("after", "through")

    def __init__(self, after: int, through: int) -> None:
        self.after = after
        self.through = through


Item = TypeVar("Item")


def read_back(items: list[Item], replay: Replay) -> tuple[list[Item | Replay], int]:
    """``items``, queued behind ``replay`` (being sent), with the events that follow it
    one after the other left to be read back: those right behind it join it (its
    ``through`` moves on), each other run of them becomes a replay in its place, so
    that every other frame (presence, a reply) keeps its place among them; and the
    bytes of the events let go. From an event out of order on (a publisher's queue
    leaves its own out, a gap is let through as it comes) nothing is changed: a
    replay would send what the queue does not hold."""
    kept: list[Item | Replay] = []
    tail: Replay | None = replay  # the replay the next event in order joins, if any
    expected, freed = replay.through + 1, 0
    for index, item in enumerate(items):
        if isinstance(item, EventOutbound) and item.seq == expected:
            freed += item.event_size
            if tail is None:
                tail = Replay(item.seq - 1, item.seq)
                kept.append(tail)
            else:
                tail.through = item.seq
        elif isinstance(item, Replay) and item.after + 1 == expected:
            if tail is None:
                tail = item
                kept.append(item)
            else:
                tail.through = item.through
        elif isinstance(item, EventOutbound | Replay):
            kept += items[index:]
            return kept, freed
        else:
            kept.append(item)
            tail = None
            continue
        expected = tail.through + 1
    return kept, freed
