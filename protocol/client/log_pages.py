"""Reading a session's log page by page, every page of one log.

An ``events`` reply is fenced by its connection's epoch, so one page is always of one
log. Two pages of a read are not: a client that reconnects between them may come back
to another log under the same session id (the session deleted and created again, or
expired and replaced), whose seqs start from 1 again. Joined to the pages already read,
its pages would make a log that never existed. So a read pins an epoch (the caller's,
or the one its client was attached to when it was called, which its ``after_seq``
counts in; else its first page's) and stops with :class:`EpochChanged` at a page of
another one, the first page included: a reconnect may come before it too.
It does not start again on the new log by itself: its caller holds what the old pages
said, and decides.

Each page must also move on: its seqs increase, from above the seq it was asked after.
A page that does not (no server of this project sends one) is a :class:`SequenceError`,
rather than a read that asks for the same page for ever, or joins an event twice.

A read ends at a seq fixed when it starts: the caller's ``until_seq``, else the log's
``last_seq`` as its first page reports it. Ending only at a page that reaches its own
``last_seq`` would chase a log that grows: a reader slower than the session's
publisher would read for as long as the session runs, and never return.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from .errors import EpochChanged, SequenceError
from .results import EventPage

ReadPage = Callable[[int, int], Awaitable[EventPage]]
"""Reads up to ``limit`` events after ``after_seq``: ``BambooClient.read_events``."""


async def log_pages(
    read_page: ReadPage,
    after_seq: int,
    page_size: int,
    epoch: str | None,
    until_seq: int | None = None,
) -> AsyncIterator[EventPage]:
    """Every page of events after ``after_seq`` (``page_size`` events at most each) up
    to ``until_seq``, else up to the log's ``last_seq`` as the first page reports it,
    each checked against the epoch of the read (``epoch``, else the first page's that
    names one) before it is yielded. It ends sooner at the log's end (a page that
    reaches its own ``last_seq``, or an empty one): it never waits for events. No
    event past the end is yielded, however many the log takes meanwhile. A page that
    names no epoch (a server from before the epoch fence) is not checked: it cannot
    be, and refusing it would stop every read from such a server. A page whose seqs do
    not increase from above ``after_seq`` raises :class:`SequenceError`."""
    pinned = epoch
    end = until_seq
    while end is None or after_seq < end:
        # Seqs have no gaps, so asking for no more than the end leaves nothing past it
        # to read and drop; the trim below is for a server that sent more all the same.
        limit = page_size if end is None else min(page_size, end - after_seq)
        page = await read_page(after_seq, limit)
        if page.epoch is not None:
            if pinned is None:
                pinned = page.epoch
            elif page.epoch != pinned:
                raise EpochChanged(pinned, page.epoch, after_seq)
        if not page.events:
            return
        _check_moves_on(page, after_seq)
        if end is None:
            end = page.last_seq
        kept = [event for event in page.events if event.seq <= end]
        past_the_end = len(kept) < len(page.events)
        if past_the_end:
            page = EventPage(kept, page.last_seq, page.epoch)
        if kept:
            yield page
        if past_the_end or kept[-1].seq >= min(end, page.last_seq):
            return
        after_seq = kept[-1].seq


def _check_moves_on(page: EventPage, after_seq: int) -> None:
    """SequenceError unless the page's seqs increase, from above ``after_seq``."""
    previous = after_seq
    for event in page.events:
        if event.seq <= previous:
            raise SequenceError(
                f"an events page asked after seq {after_seq} holds seq {event.seq} after"
                f" {previous}: its seqs must increase from above {after_seq}",
                previous + 1,
                event.seq,
            )
        previous = event.seq
