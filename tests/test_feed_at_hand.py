"""A subscription's events at hand (``take_buffered``): an actor following its own
appends takes each one as it is offered, and the buffer's bounds count only what
waits in it, however many events went through."""

from __future__ import annotations

import datetime

import msgspec

from bamboo_session.persistence.feed import Feed
from bamboo_session.protocol.models import StoredEvent

TS = datetime.datetime(2026, 12, 5, tzinfo=datetime.UTC)


def stored(seq: int) -> StoredEvent:
    content = b'{"type":"token","content":"token %d of a lone run"}' % seq
    return StoredEvent.from_json(seq, TS, msgspec.Raw(content), None)


async def nothing_to_read(after_seq: int, limit: int) -> list[StoredEvent]:
    raise AssertionError("an event at hand was read from the store")


def test_lone_events_taken_as_offered_never_fill_the_buffers_bounds() -> None:
    feed = Feed()
    subscription = feed.subscribe("s", 0, 0, nothing_to_read)
    subscription._max_bytes = 3 * stored(1).size  # three waiting at most, by bytes
    for seq in range(1, 101):
        subscription.offer([stored(seq)])
        assert [e.seq for e in subscription.take_buffered(512)] == [seq]
    assert subscription.position == 100 and not subscription.ready()


def test_events_offered_together_are_taken_together_up_to_the_limit() -> None:
    feed = Feed()
    subscription = feed.subscribe("s", 0, 0, nothing_to_read)
    subscription.offer([stored(seq) for seq in range(1, 6)])
    assert [e.seq for e in subscription.take_buffered(3)] == [1, 2, 3]
    assert [e.seq for e in subscription.take_buffered(512)] == [4, 5]
    subscription.offer([stored(6)])
    assert [e.seq for e in subscription.take_buffered(512)] == [6]
    assert subscription.position == 6 and not subscription.ready()
