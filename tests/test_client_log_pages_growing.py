"""The Python client's whole-log reads (``read_all_events``, ``event_pages``) of a log
that grows while they read it: they end at a seq fixed when they begin, the caller's
``until_seq`` or else the log's ``last_seq`` as the first page reports it, instead of
chasing the log for as long as the session takes events. A real server on an
ephemeral loopback port; a publisher appends while a reader reads slowly, each of its
pages waiting for the publisher to have appended more (a bounded number of events in
all, so that a read that chases the log still ends, with too many)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import BambooClient, EventPage, StoredEvent
from bamboo_session.protocol.client.log_pages import log_pages
from bamboo_session.protocol.client.tasks import stopped
from tests.instances import eventually
from tests.support import run_server

SESSION = "growing"
FIRST_EVENTS = 20
# The publisher stops here: a read that chased the log would end at the latest once
# it caught up with this many, so a failing test fails within seconds.
MOST_EVENTS = 400
# Events the publisher appends while the reader waits between two of its pages.
AHEAD_PER_PAGE = 10


class Publisher:
    """Appends events to the session, one at a time as fast as they are acknowledged,
    until :data:`MOST_EVENTS`, :meth:`finish` or :meth:`stop`."""

    def __init__(self, agent: BambooClient) -> None:
        self.agent = agent
        self.appended = FIRST_EVENTS
        self._finishing = False
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.appended < MOST_EVENTS and not self._finishing:
            await self.agent.publish(Token("more"))
            self.appended += 1

    @property
    def done(self) -> bool:
        return self._task.done()

    async def finish(self) -> None:
        """Stops after the publish under way is acknowledged: the log grows no more.
        (One cancelled may still be appended, its frame sent: the log's end would
        move once more, after the test has read it.)"""
        self._finishing = True
        await self._task

    async def stop(self) -> None:
        await stopped(self._task)


class SlowReader(BambooClient):
    """A client whose every page (:meth:`read_events`) is read only once the publisher
    has appended :data:`AHEAD_PER_PAGE` more events since the page before: a reader
    slower than the session's publisher, whatever the machine's timing."""

    publisher: Publisher | None = None

    async def read_events(self, after_seq: int = 0, limit: int = 1000) -> EventPage:
        publisher = self.publisher
        if publisher is not None:
            target = min(publisher.appended + AHEAD_PER_PAGE, MOST_EVENTS)
            await eventually(lambda: publisher.appended >= target or publisher.done)
        return await super().read_events(after_seq, limit)


@contextlib.asynccontextmanager
async def a_growing_session() -> AsyncIterator[tuple[SlowReader, Publisher]]:
    """The session with :data:`FIRST_EVENTS` events, a publisher appending more, and a
    slow reader of it."""
    async with run_server() as server:
        base = f"ws://127.0.0.1:{server.port}"
        async with await BambooClient.connect(base, SESSION, create=True) as agent:
            for _ in range(FIRST_EVENTS):
                await agent.publish(Token("first"))
            reader = await SlowReader.connect(base, SESSION, receive_events=False)
            async with reader:
                publisher = Publisher(agent)
                reader.publisher = publisher
                try:
                    async with asyncio.timeout(30):
                        yield reader, publisher
                finally:
                    await publisher.stop()


def seqs(events: list[StoredEvent]) -> list[int]:
    return [event.seq for event in events]


async def test_a_read_of_a_growing_log_ends_at_the_last_seq_its_first_page_reports() -> None:
    async with a_growing_session() as (reader, publisher):
        pages = [page async for page in reader.event_pages(page=5)]
        end = pages[0].last_seq
        assert FIRST_EVENTS <= end < MOST_EVENTS
        assert seqs([e for page in pages for e in page.events]) == list(range(1, end + 1))
        # The log grew while it was read: a read that followed it would have gone on.
        assert publisher.appended > end + AHEAD_PER_PAGE
        assert pages[-1].last_seq > end


async def test_read_all_events_returns_the_log_as_it_was_when_called() -> None:
    async with a_growing_session() as (reader, publisher):
        before = publisher.appended
        events = await reader.read_all_events(page=4)
        # The first page was asked for once the publisher had appended 10 more.
        assert before + AHEAD_PER_PAGE <= len(events) < MOST_EVENTS
        assert seqs(events) == list(range(1, len(events) + 1))
        assert publisher.appended > len(events) + AHEAD_PER_PAGE


async def test_until_seq_ends_the_read_there() -> None:
    async with a_growing_session() as (reader, publisher):
        assert seqs(await reader.read_all_events(page=3, until_seq=7)) == list(range(1, 8))
        # A page bigger than what is left is asked for only what is left, and a read
        # from after a seq reads up to the end all the same.
        pages = [p async for p in reader.event_pages(after_seq=5, page=100, until_seq=12)]
        assert [seqs(page.events) for page in pages] == [list(range(6, 13))]
        assert await reader.read_all_events(after_seq=12, until_seq=12) == []
        # An end beyond the log's ends at the log's end: the read never waits.
        reader.publisher = None
        await publisher.finish()
        last = (await reader.read_events(limit=1)).last_seq
        far = await reader.read_all_events(after_seq=last - 3, until_seq=last + 100)
        assert seqs(far) == [last - 2, last - 1, last]


def page_of(first: int, last: int, last_seq: int) -> EventPage:
    now = datetime.now(UTC)
    events = [StoredEvent(seq, now, Token("t")) for seq in range(first, last + 1)]
    return EventPage(events, last_seq, "a")


async def test_events_past_the_end_are_never_yielded() -> None:
    """A server that answers with more than was asked for (none of this project's
    does) still gives the read nothing past its end: the end is the read's promise, not
    the server's. (Pages made here: a real server cannot be made to send them.)"""
    asked: list[tuple[int, int]] = []

    async def read_page(after_seq: int, limit: int) -> EventPage:
        asked.append((after_seq, limit))
        return page_of(after_seq + 1, after_seq + 10, 50)

    got = [seqs(page.events) async for page in log_pages(read_page, 0, 4, None, 6)]
    assert got == [list(range(1, 7))]
    assert asked == [(0, 4)]
    # The first page's last_seq (8) is the end, though the next page says 50.
    got = [seqs(page.events) async for page in log_pages(read_page_growing, 0, 3, None)]
    assert got == [[1, 2, 3], [4, 5, 6], [7, 8]]


async def read_page_growing(after_seq: int, limit: int) -> EventPage:
    """Pages of a log of 8 events when first read, 50 by the second page."""
    return page_of(after_seq + 1, after_seq + limit, 8 if after_seq == 0 else 50)
