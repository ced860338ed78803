"""The Python client's reads of a whole log page by page (``event_pages``,
``read_all_events``) when the session is replaced between two of their pages: deleted
and created again under its id, with another epoch and its seqs from 1 again, while
the client is cut off, so that it reconnects onto the new log. The read stops with
``EpochChanged`` (both epochs in it) rather than join the old log's first pages to the
new log's later ones; a session left alone is read whole as before. A real server on an
ephemeral loopback port; the viewer reaches it through a proxy that cuts it off while
the session is replaced, between two pages the test asks for itself."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from bamboo_session.protocol import Token
from bamboo_session.protocol.client import (
    BambooClient,
    EpochChanged,
    EventPage,
    SequenceError,
    StoredEvent,
)
from bamboo_session.protocol.client.log_pages import log_pages
from bamboo_session.server.app import BambooServer
from tests.instances import eventually
from tests.proxies import HttpProxy
from tests.support import run_server

SESSION = "paged"
OLD_EVENTS = 5


class Replacing:
    """The server, the proxy the viewer goes through, and the session's epoch before
    :meth:`replace`."""

    def __init__(self, server: BambooServer, proxy: HttpProxy, old_epoch: str) -> None:
        self.server = server
        self.proxy = proxy
        self.old_epoch = old_epoch

    async def replace(self, viewer: BambooClient, new_events: int) -> str:
        """Cut ``viewer`` off, delete the session, create it again with ``new_events``
        events of "new", let the viewer back (its next request reconnects it onto the new
        log, resumed: false); the new epoch."""
        self.proxy.cut()
        await eventually(lambda: not viewer.connected)
        await self.server.manager.delete_session(SESSION)
        base = f"ws://127.0.0.1:{self.server.port}"
        async with await BambooClient.connect(base, SESSION, create=True) as replacing:
            for _ in range(new_events):
                await replacing.publish(Token("new"))
            new_epoch = replacing.epoch
        assert new_epoch is not None and new_epoch != self.old_epoch
        self.proxy.mend()
        return new_epoch


@contextlib.asynccontextmanager
async def a_session_of_five(
    client_class: type[BambooClient] = BambooClient,
) -> AsyncIterator[tuple[BambooClient, Replacing]]:
    """The session with events 1..5 of "old", a viewer of it (of ``client_class``)
    through a proxy, and what replaces the session."""
    async with run_server() as server:
        proxy = HttpProxy(server.port)
        port = await proxy.start()
        try:
            base = f"ws://127.0.0.1:{server.port}"
            async with await BambooClient.connect(base, SESSION, create=True) as agent:
                for _ in range(OLD_EVENTS):
                    await agent.publish(Token("old"))
            viewer = await client_class.connect(
                f"ws://127.0.0.1:{port}",
                SESSION,
                receive_events=False,
                backoff_initial=0.05,
                backoff_max=0.2,
            )
            async with viewer:
                assert viewer.epoch is not None
                yield viewer, Replacing(server, proxy, viewer.epoch)
        finally:
            await proxy.close()


def contents(events: list[StoredEvent]) -> list[tuple[int, str]]:
    return [(e.seq, e.event.content) for e in events]  # type: ignore[union-attr]


async def test_a_session_left_alone_is_read_whole_page_by_page() -> None:
    async with a_session_of_five() as (viewer, replacing):
        pages = [page async for page in viewer.event_pages(page=2)]
        assert [[e.seq for e in page.events] for page in pages] == [[1, 2], [3, 4], [5]]
        assert {page.epoch for page in pages} == {replacing.old_epoch}
        whole = [(seq, "old") for seq in range(1, OLD_EVENTS + 1)]
        assert contents(await viewer.read_all_events(page=2)) == whole
        pinned = await viewer.read_all_events(page=2, epoch=replacing.old_epoch)
        assert contents(pinned) == whole
        assert contents(await viewer.read_all_events(after_seq=3, page=1)) == whole[3:]
        assert await viewer.read_all_events(after_seq=OLD_EVENTS) == []


# The new log longer than the pages read of the old (its seqs 3.. would have followed
# the old log's 1, 2), and shorter (an empty page, which ended the read at seq 2).
@pytest.mark.parametrize("new_events", [6, 1])
async def test_a_session_replaced_between_two_pages_stops_the_read(new_events: int) -> None:
    async with a_session_of_five() as (viewer, replacing):
        pages = viewer.event_pages(page=2)
        first = await anext(pages)
        assert contents(first.events) == [(1, "old"), (2, "old")]
        assert first.epoch == replacing.old_epoch
        new_epoch = await replacing.replace(viewer, new_events)
        with pytest.raises(EpochChanged) as caught:
            await anext(pages)
        error = caught.value
        assert (error.previous_epoch, error.epoch, error.after_seq) == (
            replacing.old_epoch,
            new_epoch,
            2,
        )
        assert replacing.old_epoch in str(error) and new_epoch in str(error)
        # Nothing restarts on its own; a new read is of the new log, whole.
        assert viewer.epoch == new_epoch
        new_log = [(seq, "new") for seq in range(1, new_events + 1)]
        assert contents(await viewer.read_all_events(page=2)) == new_log


class PausingClient(BambooClient):
    """A client whose :meth:`read_events` (one page of a read) waits, after the first
    page it reads, for the test's ``between_pages``: the replacement comes between two
    pages of one ``read_all_events`` call, whatever the timing."""

    between_pages: Callable[[], Awaitable[None]] | None = None

    async def read_events(self, after_seq: int = 0, limit: int = 1000) -> EventPage:
        page = await super().read_events(after_seq, limit)
        hook, self.between_pages = self.between_pages, None
        if hook is not None:
            await hook()
        return page


async def test_read_all_events_raises_rather_than_return_two_logs_joined() -> None:
    async with a_session_of_five(PausingClient) as (viewer, replacing):
        assert isinstance(viewer, PausingClient)
        new_epochs: list[str] = []

        async def replace() -> None:
            new_epochs.append(await replacing.replace(viewer, 6))

        viewer.between_pages = replace
        with pytest.raises(EpochChanged) as caught:
            spliced = await viewer.read_all_events(page=2)
            pytest.fail(f"a log read from two epochs: {contents(spliced)}")
        assert (caught.value.previous_epoch, caught.value.epoch) == (
            replacing.old_epoch,
            new_epochs[0],
        )


async def test_a_read_pinned_to_the_old_epoch_refuses_the_new_log() -> None:
    """A caller that saved ``last_seq`` and ``epoch`` reads what follows: after the
    session was replaced, its first page is of the new log, and the read says so."""
    async with a_session_of_five() as (viewer, replacing):
        new_epoch = await replacing.replace(viewer, 8)
        await eventually(lambda: viewer.epoch == new_epoch)
        with pytest.raises(EpochChanged) as caught:
            await viewer.read_all_events(after_seq=3, epoch=replacing.old_epoch)
        error = caught.value
        assert (error.previous_epoch, error.epoch, error.after_seq) == (
            replacing.old_epoch,
            new_epoch,
            3,
        )
        assert [e.seq for e in await viewer.read_all_events(after_seq=3)] == [4, 5, 6, 7, 8]


def page_of(seqs: range, last_seq: int, epoch: str | None) -> EventPage:
    now = datetime.now(UTC)
    return EventPage([StoredEvent(seq, now, Token("t")) for seq in seqs], last_seq, epoch)


async def read_through(pages: dict[int, EventPage], epoch: str | None = None) -> list[int]:
    """The seqs :func:`log_pages` gives from these pages (by the ``after_seq`` asked)."""

    async def read_page(after_seq: int, limit: int) -> EventPage:
        return pages[after_seq]

    return [e.seq async for page in log_pages(read_page, 0, 2, epoch) for e in page.events]


async def test_pages_that_name_no_epoch_are_read_as_before() -> None:
    """A server from before the epoch fence sends no ``epoch``: its pages cannot be
    checked, and are joined as they were. (A server cannot be made to leave the field
    out, so these pages are made here: the check itself, without a server.)"""
    old_server = {0: page_of(range(1, 3), 3, None), 2: page_of(range(3, 4), 3, None)}
    assert await read_through(old_server) == [1, 2, 3]
    assert await read_through(old_server, epoch="saved") == [1, 2, 3]
    # The epoch is pinned from the first page that names one.
    upgraded = {0: page_of(range(1, 3), 4, None), 2: page_of(range(3, 5), 4, "a")}
    assert await read_through(upgraded) == [1, 2, 3, 4]


class ReplacedBeforeFirstPage(BambooClient):
    """A client whose first :meth:`read_events` after ``before_first_page`` is set waits
    for it before it asks: the session is replaced after the read was called, before its
    first page is read (as when the connection drops while the first request is out,
    and the client resends it on the new log)."""

    before_first_page: Callable[[], Awaitable[None]] | None = None

    async def read_events(self, after_seq: int = 0, limit: int = 1000) -> EventPage:
        hook, self.before_first_page = self.before_first_page, None
        if hook is not None:
            await hook()
        return await super().read_events(after_seq, limit)


@pytest.mark.parametrize("after_seq", [3, 0])
async def test_a_session_replaced_before_the_first_page_stops_the_read(after_seq: int) -> None:
    """The read is of the log the client was attached to when it was called: that is
    the log ``after_seq`` counts in (say, ``client.last_seq``). A first page of the new
    log would have joined the old log's seqs up to 3 to the new log's 4.. (or read
    another log than the one asked for), with nothing to tell."""
    async with a_session_of_five(ReplacedBeforeFirstPage) as (viewer, replacing):
        assert isinstance(viewer, ReplacedBeforeFirstPage)
        new_epochs: list[str] = []

        async def replace() -> None:
            new_epochs.append(await replacing.replace(viewer, 8))

        viewer.before_first_page = replace
        with pytest.raises(EpochChanged) as caught:
            read = await viewer.read_all_events(after_seq=after_seq, page=2)
            pytest.fail(f"a read asked of one log returned another's: {contents(read)}")
        error = caught.value
        assert (error.previous_epoch, error.epoch, error.after_seq) == (
            replacing.old_epoch,
            new_epochs[0],
            after_seq,
        )
        # The read asked of the new log, now the client's, reads it.
        assert [e.seq for e in await viewer.read_all_events(after_seq=after_seq)] == list(
            range(after_seq + 1, 9)
        )


# Second pages no server of this project sends (the first is seqs 1, 2 of 5), with the
# seq the read expected at least and the one it got: each would have made the read ask
# for the same page for ever, or join an event twice, or out of order.
STUCK_PAGES = {
    "the same page again": (range(1, 3), 3, 1),
    "a page that goes back": (range(2, 4), 3, 2),
    "a page out of order": (range(4, 2, -1), 5, 3),
}


@pytest.mark.parametrize(("second", "expected", "got"), STUCK_PAGES.values(), ids=STUCK_PAGES)
async def test_a_page_that_does_not_move_on_stops_the_read(
    second: range, expected: int, got: int
) -> None:
    """Every event of a page comes after the one before it (the first after the seq the
    page was asked after): else the read would not end, or would repeat events."""
    pages = {0: page_of(range(1, 3), 5, "a"), 2: page_of(second, 5, "a")}

    async def read_page(after_seq: int, limit: int) -> EventPage:
        await asyncio.sleep(0)  # a read that never ends can still be timed out
        return pages.get(after_seq, page_of(range(0), 5, "a"))

    async with asyncio.timeout(5):
        with pytest.raises(SequenceError) as caught:
            read = [e.seq async for page in log_pages(read_page, 0, 2, None) for e in page.events]
            pytest.fail(f"a read of impossible pages returned {read}")
    assert (caught.value.expected, caught.value.got) == (expected, got)
