"""Replays, and live events read back with them: a :class:`Replay` is a placeholder in
a connection's queue for the session's events in ``(after, through]``, read from the
actor's ring or from storage when the writer comes to it; :func:`read_back` makes room
in a queue behind a replay being sent by leaving its events to be read that way too.

Why: live events queue behind a resume's replay, and a replay read from the store (a
Redis one) or waiting for its peer's read allowance may last longer than the queue
does at the session's rate. Closing such a reader with 4429, however fast it reads,
left a reader far behind on a busy session unable ever to catch up (it got a page or
so per connection: bench/chaos_soak.py on Redis). Read back instead, the same frames
come in the same order, each once, and the queue's bounds hold. A read-back is for a
replay that is making progress: the events it leaves to the store, net of the pages
the replay has sent since, are bounded (:class:`ReadBackLag`), so that a reader that
stopped reading, or that reads slower than the session goes, is still closed with 4429
and resumes, rather than lagging without end.
"""

from __future__ import annotations

from typing import Final, TypeVar, final

from .outbound import EventOutbound

# How far a connection's replays may fall behind through read-backs, net of the pages
# sent since: sixteen replay pages (server/room.py: 512 events, 256 KiB each), in
# events and in bytes. Big enough to ride out a burst: in the chaos soak on Redis a
# session appends up to ~5.7 MB/s while a reader's pages (64 of its 4 KB events, 20 to
# 60 ms a read) come at about as much: with four pages, readers were closed 146 times
# in 120 s, most of whom would have caught up (traced without the bound: 44 of 48 did);
# with sixteen, 5 times.
# Small enough that a reader slower than the session is told within seconds at such
# rates, for a few MiB of lag held in the store, not in memory.
READ_BACK_LAG_EVENTS: Final = 16 * 512
READ_BACK_LAG_BYTES: Final = 16 * 256 * 1024


@final  # told by exact type in an outbox's queue (outbox.py, writer_life.py)
class Replay:
    """A placeholder in an outbox: send the session's events in ``(after, through]``
    here, read from the actor's ring or from storage. ``through`` may grow until the
    replay is sent whole: events queued behind it are read with it (:func:`read_back`)."""

    __slots__ = ("after", "through")

    def __init__(self, after: int, through: int) -> None:
        self.after = after
        self.through = through


class ReadBackLag:
    """What a connection's read-backs have left to the store (events, bytes), less what
    its replays have sent since, never below zero: how far it has fallen behind the
    session by them. Grows only while a replay makes less progress than the session
    appends; past its bound, a read-back is refused (the queue overflows: 4429)."""

    __slots__ = ("bytes", "events")

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def left_behind(self, events: int, size: int) -> bool:
        """Counts ``events`` of ``size`` bytes read back; whether the lag is past its
        bound now."""
        self.events += events
        self.bytes += size
        return self.events > READ_BACK_LAG_EVENTS or self.bytes > READ_BACK_LAG_BYTES

    def made_up(self, events: int, size: int) -> bool:
        """Counts a replay page of ``events`` and ``size`` bytes sent; whether nothing
        is owed any more."""
        self.events = max(0, self.events - events)
        self.bytes = max(0, self.bytes - size)
        return not self.events and not self.bytes


Item = TypeVar("Item")


def read_back(items: list[Item], replay: Replay) -> tuple[list[Item | Replay], int, int]:
    """``items``, queued behind ``replay`` (being sent), with the events that follow it
    one after the other left to be read back: those right behind it join it (its
    ``through`` moves on), each other run of them becomes a replay in its place, so
    that every other frame (presence, a reply) keeps its place among them; and the
    number and bytes of the events let go. From an event out of order on (a publisher's queue
    leaves its own out, a gap is let through as it comes) nothing is changed: a
    replay would send what the queue does not hold."""
    kept: list[Item | Replay] = []
    tail: Replay | None = replay  # the replay the next event in order joins, if any
    expected, events, freed = replay.through + 1, 0, 0
    for index, item in enumerate(items):
        if isinstance(item, EventOutbound) and item.seq == expected:
            events += 1
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
            return kept, events, freed
        else:
            kept.append(item)
            tail = None
            continue
        expected = tail.through + 1
    return kept, events, freed
