"""Replay: the events a resuming connection missed, a page at a time, from the session
room's ring while it still holds them, else from the store.

A page read from the store is bounded in events and in bytes, and takes one of the
server's page-read slots while it is read, within their deadline, as ``history`` and
``events`` requests do (server/pages.py, ``PageReads``).
It is read once for every resumer that needs it at that moment: the first starts the
read, and resumers that ask for the same start meanwhile wait for it (after a restart,
the viewers of a session all resume at once from the same seq). A page that reaches up
to where the ring begins then goes in front of the ring (``SessionRoom.seed_ring``), so
that resumers who come later replay it from memory.

``send_replay`` sends a connection's replay, page after page, each within a deadline,
and each once its peer's read allowance allows (server/read_allowance.py), a page's
worth taken from it before the page is read (the replays of a peer's many connections
count each other's pages), and once the pages that its peer's connections hold leave
room for it in the peer's share of the memory budget, and, past the peer's first page,
under what all peers' pages may hold together (server/replay_shares.py); when
the session is closed or expires meanwhile, to its end, within the close's bound.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import sys
import termios
import time
from collections.abc import Callable

import structlog
from websockets.asyncio.server import ServerConnection

from bamboo_session.persistence.base import EventStorage, SessionNotFound, StorageError
from bamboo_session.protocol.codec import Codec
from bamboo_session.protocol.errors import CloseCode

from .failures import failure_of
from .flush import send_frames, write_now
from .metrics import Metrics
from .outbound import BYTES_HEADER, Outbound
from .outbox import Outbox
from .pages import PageReads
from .read_allowance import ReadAllowance
from .read_back import Replay
from .replay_charge import PageCharge
from .replay_shares import ReplayShare
from .room import REPLAY_PAGE, REPLAY_PAGE_BYTES, SessionRoom
from .sent_events import REPLAY

log = structlog.get_logger("bamboo_session.replay")


class ReplayReads:
    """One session's replay pages, with at most one store read in flight per start."""

    __slots__ = ("_reads", "metrics", "room", "session_id", "storage")

    def __init__(
        self, room: SessionRoom, storage: EventStorage, session_id: str, metrics: Metrics
    ) -> None:
        self.room = room
        self.storage = storage
        self.session_id = session_id
        self.metrics = metrics
        # The store reads in flight, by the seq they read after.
        self._reads: dict[int, asyncio.Task[list[Outbound]]] = {}

    async def page(
        self, after: int, through: int, reads: PageReads | None = None
    ) -> list[Outbound]:
        """Events in ``(after, through]``, oldest first, a page at most; [] when there
        are none. A store read goes through ``reads`` when given (a slot, a deadline).
        Raises what the store's ``read_events`` raises, or StoreTimeout (so does every
        resumer that waited for the same read; the next one reads again)."""
        if after >= through:
            return []
        page = self.room.ring_page(after, through)
        if page is not None:
            return page
        read = self._reads.get(after)
        if read is None:
            read = self._start(after, through, reads)
        # Shielded: a resumer that goes away does not cancel what the others wait for.
        stored = await asyncio.shield(read)
        return [out for out in stored if out.seq <= through]

    def _start(
        self, after: int, through: int, reads: PageReads | None
    ) -> asyncio.Task[list[Outbound]]:
        # Up to where the ring begins: what it holds is not read again.
        end = min(through, self.room.ring_start - 1)
        limit = min(REPLAY_PAGE, max(1, end - after))
        read = asyncio.create_task(
            self._read(after, limit, reads), name=f"replay-read:{self.session_id}:{after}"
        )
        self._reads[after] = read
        read.add_done_callback(functools.partial(self._finished, after))
        return read

    def _finished(self, after: int, read: asyncio.Task[list[Outbound]]) -> None:
        if self._reads.get(after) is read:
            del self._reads[after]  # done, or failed: the next resumer reads again
        if not read.cancelled():
            read.exception()  # its waiters have it; should none be left, it is not "lost"

    async def _read(self, after: int, limit: int, reads: PageReads | None) -> list[Outbound]:
        if reads is None:
            page = await self._read_events(after, limit)
        else:
            # The deadline is this shared read's: every resumer waiting for it fails with it.
            page = await reads.read(functools.partial(self._read_events, after, limit))
        self.room.seed_ring(page)
        return page

    async def _read_events(self, after: int, limit: int) -> list[Outbound]:
        self.metrics.replay_store_reads.inc()
        stored = await self.storage.read_events(
            self.session_id,
            after_seq=after,
            limit=limit,
            max_bytes=REPLAY_PAGE_BYTES,
            epoch=self.room.epoch,  # the resumer's log, never one that took its place
        )
        return [Outbound.for_event(event) for event in stored]


async def send_replay(
    replay: Replay,
    reads: ReplayReads,
    page_reads: PageReads,
    outbox: Outbox,
    ws: ServerConnection,
    codec: Codec,
    page_timeout: float,
    allowance: ReadAllowance | None = None,
    share: ReplayShare | None = None,
) -> int:
    """Send a resume's missed events on ``ws``, a page at a time, each written before
    the next is read; the number of frames sent. A peer that takes nothing of its
    replay for ``page_timeout`` (the first page included, so a 4429 here always comes
    after some progress) is closed with 4429, since it is what holds the page in
    memory; one that reads slowly but steadily is not. A replay whose outbox is closing
    goes no further, unless the close lets it finish (``CloseRequest.replay_goes_on``,
    until the close's bound cuts it: server/closing.py); one that stops short takes
    what was queued behind it along: those live events would come after a gap. With an
    ``allowance``, each page waits until the peer's debt is repaid (nothing is held
    meanwhile; a close ends the wait, and a replay the close lets finish goes on
    without it, within the close's bound), and is charged once framed; a page's worth
    (``REPLAY_PAGE_BYTES``) is taken from it before the page is read, and given back
    then, so that the replays of a peer's connections, read at the same time, find
    each other's pages there. With the peer's ``share`` (server/replay_shares.py), each
    page waits, holding nothing, until the pages its peer's connections hold leave room
    for it, and those of all peers' under their total unless it is the peer's first (a
    close ends the wait, as the allowance's), and is held in that share
    until it is sent; a page that comes out bigger than its charge (one big event)
    and past the share is let go before it is sent (charged to the ``allowance`` all
    the same: it was read), and read again once its peer's pages leave room for all
    of it, unless a close lets the replay finish (past the share: no page let go).
    Each page passes the outbox's check of what goes to the socket (to_socket,
    server/sent_events.py) before it is framed: a page let go is checked again when it
    is read again, and one whose events were all sent already is skipped."""
    position, sent = replay.after, 0
    wanted = REPLAY_PAGE_BYTES  # of the peer's share, for the next page before it is read
    # ``replay.through`` is read again at every page: it moves on to take in the live
    # events that would overflow the queue behind the replay (Outbox.push), for as long
    # as the pages sent keep up (server/read_back.py, ReadBackLag).
    while position < replay.through and _goes_on(outbox):
        if (
            allowance is not None
            and not await allowance.repaid(
                functools.partial(_closing_within, outbox), reads.metrics.replay_wait_seconds.inc
            )
            and not _goes_on(outbox)
        ):
            break  # closing meanwhile, and the close cuts the replay
        if (
            share is not None
            and not share.take_now(wanted)
            and not await _share_room(share, wanted, outbox, reads.metrics)
        ):
            if not _goes_on(outbox):
                break  # closing meanwhile, and the close cuts the replay
            share.settle(0, wanted)  # a close that lets it finish: no wait
        held = wanted if share is not None else 0  # of the peer's share
        reserved = allowance.reserve(REPLAY_PAGE_BYTES) if allowance is not None else 0
        size, let_go = 0, 0  # let_go: the bytes of a page read, then let go for its size
        checked = outbox.sent_seq  # where the check stood before this page
        try:
            frames, end, charge, counted = await _page_frames(
                reads, page_reads, outbox, codec, position, replay.through
            )
            if frames and _goes_on(outbox):
                size = sum(map(len, frames))  # charged once framed, if it is to be sent
                if share is not None and outbox.closing is None:
                    # A page of one event is as big as the event (a frame's worth, or
                    # more once re-encoded): past its charge and its peer's share, it
                    # is let go, and read again once the share has room for all of it.
                    # Not under a close that lets the replay finish: that goes on
                    # without waiting for room, so the page would only be read again.
                    kept = size + len(frames) * BYTES_HEADER
                    if not share.may_grow(held, kept):
                        wanted, let_go, size = kept, size, 0
                        outbox.sent_seq = checked  # not sent: checked again once read again
        except StorageError as exc:
            log.warning("replay failed", error=str(exc))
            if isinstance(exc, SessionNotFound) and outbox.handed_over and not outbox.closing:
                # Being deleted, and it may come back: the delete's outcome closes the
                # connection (4404 or 1011), not this read. Nothing may follow the gap.
                outbox.discard()
                return sent
            failure = failure_of(exc)
            outbox.drop(failure.close, failure.reason)  # live events cannot follow a gap
            return sent
        finally:
            if allowance is not None:
                # A page let go was read all the same, and is read again: charged each
                # time, or a peer whose share is full has big events read for nothing
                # (as request_gate.py charges the page of an answer it refuses).
                allowance.settle(reserved, size + let_go)
            if share is not None:
                # What the page holds once framed (or nothing, when not sent), from
                # the ring or not: a slow reader holds it all the same.
                kept = size + len(frames) * BYTES_HEADER if size else 0
                share.settle(held, kept)
                held = kept
        if let_go:
            del frames, charge  # not held while it waits for room
            continue
        if not size:
            if end > position and not frames and _goes_on(outbox):
                position = end  # every event of the page was sent already: none goes
                continue
            break
        wanted = REPLAY_PAGE_BYTES
        # In the process's memory budget until it is in the socket's buffer: a stalled
        # resumer holds a page for up to page_timeout, and there may be thousands.
        charge.start(outbox.budget)
        try:
            taken = await _send_page(ws, frames, page_timeout, charge.recheck)
        finally:
            charge.release()
            if share is not None:
                share.give_back(held)
        if not taken:
            outbox.drop(CloseCode.TOO_SLOW, "too slow to read: replay page not taken in time")
            return sent
        sent, position = sent + len(frames), end
        outbox.replay_page_sent(len(frames), counted)  # progress: what read-backs may lag
        del frames  # not held while the next page is read
    if position < replay.through and outbox.closing is not None:
        outbox.cut_to_close()  # what was queued behind the replay would follow a gap
    return sent


async def _share_room(share: ReplayShare, size: int, outbox: Outbox, metrics: Metrics) -> bool:
    """Waits, holding nothing, until the peer's ``share`` has room for a page of
    ``size`` (charged then: True), or until the outbox is closing (False, nothing
    charged)."""
    started = time.monotonic()
    try:
        return await share.room(size, functools.partial(_until_closing, outbox))
    finally:
        metrics.replay_share_wait_seconds.inc(time.monotonic() - started)


async def _until_closing(outbox: Outbox) -> None:
    while outbox.closing is None:
        await outbox.closing_within(3600.0)


async def _closing_within(outbox: Outbox, delay: float) -> bool:
    """Waits ``delay`` seconds at most; whether the outbox is closing (a replay that
    its close lets finish goes on without waiting its peer's debt)."""
    await outbox.closing_within(delay)
    return outbox.closing is not None


def _goes_on(outbox: Outbox) -> bool:
    """Whether a replay may send another page: no close asked for, or one that lets it
    finish and whose bound has not cut it yet."""
    closing = outbox.closing
    return closing is None or closing.replay_goes_on


async def _page_frames(
    reads: ReplayReads,
    page_reads: PageReads,
    outbox: Outbox,
    codec: Codec,
    after: int,
    through: int,
) -> tuple[list[bytes], int, PageCharge, int]:
    """The next page of a replay as the connection's frames (those its outbox's check
    lets through), the seq the page ends at, what to charge to the memory budget
    while they are sent, and their events' bytes as a queue counts them (as a
    read-back counts what it leaves to the store: Outbox.replay_page_sent). Of a page
    read from the store, only the frames are kept: what a stalled peer holds is them,
    no more."""
    page = await reads.page(after, through, page_reads)
    if not page:
        return [], after, PageCharge(0, []), 0
    end = page[-1].seq
    page = outbox.to_socket(page, REPLAY)
    frames = [out.framed(codec) for out in page]
    fixed, in_rings = 0, []
    for out, frame in zip(page, frames, strict=True):
        if out.ring is None:
            fixed += len(frame) + BYTES_HEADER
        else:
            in_rings.append(out)
    return frames, end, PageCharge(fixed, in_rings), sum(out.event_size for out in page)


async def _send_page(
    ws: ServerConnection, frames: list[bytes], stall_timeout: float, recheck: Callable[[], None]
) -> bool:
    """Send a page; False when the peer took nothing of it for ``stall_timeout``;
    ``recheck`` at each look for progress (the page's charge).

    Progress is what left the process or the kernel: a deadline for the whole page
    would close slow but steady readers, because the kernel reports a full socket
    writable again only once a good part of its buffer (megabytes, autotuned) drained.

    A page the socket has room for (a resume's few missed events, mostly) is written at
    once, and is taken as soon as its buffer stays below the high-water mark: no task,
    no wait and no look at the kernel's queue for what needs none."""
    written = write_now(ws, frames)
    if written and not ws.paused:
        return True
    sending = asyncio.ensure_future(send_frames(ws, [] if written else frames))
    waiting = _Waiting(ws)
    check = min(1.0, stall_timeout / 4)
    try:
        while True:
            done, _ = await asyncio.wait({sending}, timeout=check)
            if done:
                sending.result()
                return True
            recheck()
            if waiting.stalled_for() >= stall_timeout:
                return False
    finally:
        if not sending.done():
            sending.cancel()
            await asyncio.wait({sending})
        if not sending.cancelled():
            sending.exception()  # a connection that ended says why elsewhere: no traceback


class _Waiting:
    """The bytes a connection has yet to deliver, in its transport and in the kernel's
    send queue, and how long they have not gone down."""

    __slots__ = ("_fd", "_last", "_since", "_transport")

    def __init__(self, ws: ServerConnection) -> None:
        self._transport = ws.transport
        sock = ws.transport.get_extra_info("socket")
        self._fd = sock.fileno() if sock is not None else -1
        self._last = self._bytes()
        self._since = time.monotonic()

    def stalled_for(self) -> float:
        now, waiting = time.monotonic(), self._bytes()
        if waiting < self._last:
            self._since = now
        self._last = waiting
        return now - self._since

    def _bytes(self) -> int:
        return self._transport.get_write_buffer_size() + kernel_queue(self._fd)


def kernel_queue(fd: int) -> int:
    """Bytes in a socket's send queue, not yet acknowledged by the peer (Linux's
    SIOCOUTQ; 0 where it cannot be read)."""
    if fd < 0:
        return 0
    try:
        answer = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(answer, sys.byteorder)
