"""SessionRoom: the connections attached to one session and what they have been sent,
with no event loop and no I/O (the sans-I/O core of a session actor).

The actor feeds it what happened (an event stored, a connection joining or leaving) and
the room decides what each outbox gets: welcome and replay for a joiner, the event for
every connection but its publisher, presence for the others. The ``connections`` count
in welcome and presence is the room's own, unless the actor gives the session-wide one
(server/presence.py, for a store that several processes share). Because the actor calls
it between its awaits, a joiner sees every event exactly once: older ones replayed from
the ring or the store, newer ones live.

The ring of recent events is bounded in events and in bytes, and charged to the
process's memory budget: past that budget it keeps nothing, and replays read the store.
Its bytes are what its events keep: each event's JSON (``Outbound.event_size``) and the
frames made of it for peers, one per codec at most, counted as they are made
(``frame_kept``); and, while it has any event, the ring's own deque (``RING_BYTES``).
A page a replay reads from the store that ends where the ring begins goes in front of
it (``seed_ring``): after a restart the ring is empty, and the first resumer's read then
serves the session's other resumers from memory.
"""

from __future__ import annotations

import collections
import itertools
import sys
import weakref
from typing import Final

from bamboo_session.protocol.errors import CloseCode
from bamboo_session.protocol.frames import Closed, Presence, Welcome
from bamboo_session.protocol.models import SessionMetadata, StoredEvent

from .budget import NO_LIMIT, MemoryBudget
from .outbound import FrameKeeper, Outbound
from .outbox import Outbox
from .read_back import Replay

REPLAY_PAGE = 512  # events per page of a replay
# And bytes: a page is what a stalled resumer holds, and what a slow one must take
# within the page deadline (256 KiB in 20 s is 13 KB/s, slower than any reader that
# makes progress).
REPLAY_PAGE_BYTES = 256 * 1024
# What a ring holds besides its events: its deque, with its first block of 64 slots
# (760 bytes on CPython 3.11). Uncounted, a ring of one event held 657 bytes more than
# it counted (tracemalloc); each further block (528 bytes, 8 an event) is within what
# an event's count exceeds what it holds (server/outbound.py, 50 to 60 bytes).
RING_BYTES: Final = sys.getsizeof(collections.deque())


class SessionRoom:
    __slots__ = (
        "__weakref__",
        "_keeper",
        "budget",
        "epoch",
        "origins",
        "outboxes",
        "published_seq",
        "repeated",
        "ring",
        "ring_bytes",
        "ring_max_bytes",
        "ring_size",
    )

    def __init__(
        self,
        epoch: str,
        published_seq: int,
        ring_size: int,
        ring_max_bytes: int = 0,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.epoch = epoch
        self.published_seq = published_seq  # every event up to here has been fanned out
        self.repeated = 0  # events handed out again, fanned out to nobody (deliver)
        self.ring_size = ring_size
        self.ring_max_bytes = ring_max_bytes if ring_max_bytes > 0 else NO_LIMIT
        self.ring_bytes = 0
        self.budget = budget if budget is not None else MemoryBudget(0)
        # Recent events for replay without the store; allocated with the first event.
        self.ring: collections.deque[Outbound] | None = None
        self.outboxes: dict[str, Outbox] = {}
        # seq -> the outbox that published it, until it is fanned out (to all but it).
        self.origins: dict[int, Outbox] = {}
        # What the ring's events point to, to count the frames made of them.
        self._keeper: weakref.ReferenceType[FrameKeeper] = weakref.ref(self)

    # -- events -------------------------------------------------------------------

    def expect(self, seq: int, origin: Outbox) -> None:
        """``origin`` published ``seq``: when it arrives, it is not sent back there (its
        stream misses it by design, which its check of what it sends then allows)."""
        if seq > self.published_seq:
            self.origins[seq] = origin
            origin.expects_gaps = True

    def deliver(self, events: list[StoredEvent]) -> int:
        """Stored events, in seq order, following ``published_seq``: each goes to the
        ring and to every outbox but its publisher's. One at or below ``published_seq``
        was fanned out already: it goes nowhere again, so that each connection gets each
        event once and in order, and the ring stays one run of seqs with no repeat
        (``ring_page`` indexes it by seq), whatever its source hands out twice. Returns
        how many were so, also added to ``repeated`` (0 unless that source is at fault:
        the actor counts them). A gap is let through as it comes, and the ring starts
        again after it: connections that publish nothing are closed at it when their
        check sees it (server/sent_events.py), and resume from the store."""
        outboxes = self.outboxes.values()
        origins = self.origins
        repeated = 0
        for stored in events:
            if stored.seq - self.published_seq != 1:
                if stored.seq <= self.published_seq:
                    repeated += 1
                    continue
                self.drop_ring()  # ring_page takes it for one run of seqs
            out = Outbound.for_event(stored)
            self._remember(out)
            self.published_seq = stored.seq
            origin = origins.pop(stored.seq, None) if origins else None
            for outbox in outboxes:
                if outbox is not origin:
                    outbox.push(out)
        if repeated:
            self.repeated += repeated
        return repeated

    def restart_at(self, last_seq: int) -> None:
        """The log moved on while nobody watched (appends while parked, another
        process): the ring no longer follows it, so it starts again at ``last_seq``."""
        if last_seq != self.published_seq:
            self.drop_ring()
            self.origins.clear()
            self.published_seq = last_seq

    # -- connections ----------------------------------------------------------------

    def join(
        self,
        outbox: Outbox,
        last_seq: int | None,
        epoch: str | None,
        metadata: SessionMetadata,
        connections: int | None = None,
    ) -> Welcome:
        """Attach ``outbox``: its welcome, then the replay it asked for, are queued on it;
        the others learn of it by presence."""
        self.outboxes[outbox.connection_id] = outbox
        if connections is None:
            connections = len(self.outboxes)
        through = self.published_seq
        resumed = (
            last_seq is not None and (epoch is None or epoch == self.epoch) and last_seq <= through
        )
        replay = through - last_seq if resumed and last_seq is not None else 0
        metadata.connections = connections
        metadata.last_seq = through
        welcome = Welcome(outbox.connection_id, metadata, self.epoch, through, resumed, replay)
        if outbox.max_batch_items:
            welcome.extensions = ["batch"]
            welcome.max_batch_items = outbox.max_batch_items
            welcome.max_batch_bytes = outbox.max_batch_bytes
        outbox.push(Outbound(welcome))
        # Its stream starts after the last event it has, or after the welcome's last_seq.
        outbox.sent_seq, outbox.expects_gaps = through - replay, False
        if replay and last_seq is not None:
            outbox.push(Replay(last_seq, through))
        self._presence(outbox.connection_id, outbox.role, True, connections)
        return welcome

    def leave(self, connection_id: str, connections: int | None = None) -> Outbox | None:
        outbox = self.outboxes.pop(connection_id, None)
        if outbox is not None:
            outbox.close(CloseCode.NORMAL, "disconnected")
            count = len(self.outboxes) if connections is None else connections
            self._presence(connection_id, outbox.role, False, count)
        return outbox

    def announce(self, connection_id: str, role: str, joined: bool, connections: int) -> None:
        """A connection to this session on another process joined or left."""
        self._presence(connection_id, role, joined, connections)

    def close_all(self, code: CloseCode, reason: str, *, replays_go_on: bool = False) -> None:
        """A ``closed`` frame, then the close, for every connection; with
        ``replays_go_on`` (the session closed or expired), after the rest of a replay
        under way, within the close timeout (server/closing.py)."""
        close_every(self.hand_over(), code, reason, replays_go_on=replays_go_on)

    def hand_over(self) -> list[Outbox]:
        """Every connection leaves the room, still open: the caller closes them."""
        outboxes = list(self.outboxes.values())
        self.outboxes.clear()
        self.origins.clear()
        return outboxes

    def _presence(self, subject: str, role: str, joined: bool, connections: int) -> None:
        """Everyone but ``subject`` learns that it joined or left."""
        frame = Presence(
            role=role,
            connections=connections,
            joined=subject if joined else None,
            left=None if joined else subject,
        )
        out = Outbound(frame)
        for connection_id, outbox in self.outboxes.items():
            if connection_id != subject:
                outbox.push(out)

    # -- the ring -------------------------------------------------------------------

    def _remember(self, out: Outbound) -> None:
        ring = self.ring
        if ring is None:
            if not self.ring_size:
                return
            ring = self.ring = self._new_ring()
        size, budget = out.held, self.budget
        if len(ring) == self.ring_size:  # the oldest falls off as this one comes in
            oldest = ring[0]
            oldest.ring = None  # frames made of it from here on are its senders'
            dropped = oldest.held
            self.ring_bytes -= dropped
            budget.used -= dropped
        ring.append(out)
        out.ring = self._keeper
        self.ring_bytes += size
        budget.used += size
        if self.ring_bytes > self.ring_max_bytes or budget.used > budget.limit:
            self.shrink_ring(self.ring_size)

    def frame_kept(self, size: int) -> None:
        """An event of the ring was framed for a codec (Outbound.framed): the ring keeps
        those bytes too, within its bounds."""
        budget = self.budget
        self.ring_bytes += size
        budget.used += size
        if self.ring_bytes > self.ring_max_bytes or budget.used > budget.limit:
            self.shrink_ring(self.ring_size)

    def shrink_ring(self, keep: int) -> None:
        """Keep at most the newest ``keep`` events, within the ring's bytes and the
        process's budget (a parked session stays small)."""
        ring = self.ring
        if ring is None:
            return
        max_bytes, budget = self.ring_max_bytes, self.budget
        while ring and (
            len(ring) > keep or self.ring_bytes > max_bytes or budget.used > budget.limit
        ):
            out = ring.popleft()
            out.ring = None
            size = out.held
            self.ring_bytes -= size
            budget.used -= size
        if not ring:
            self._forget_ring()

    def _new_ring(self) -> collections.deque[Outbound]:
        """An empty ring, its own bytes counted (and charged) from here."""
        self.ring_bytes += RING_BYTES
        self.budget.used += RING_BYTES
        return collections.deque(maxlen=self.ring_size)

    def _forget_ring(self) -> None:
        """An emptied ring goes, and its own bytes with it (its events' went with them)."""
        self.ring = None
        self.ring_bytes -= RING_BYTES
        self.budget.used -= RING_BYTES

    def drop_ring(self) -> None:
        """Forget every event kept (the log moved on, or the session retires)."""
        for out in self.ring or ():
            out.ring = None
        self.budget.used -= self.ring_bytes
        self.ring_bytes = 0
        self.ring = None

    @property
    def ring_start(self) -> int:
        """The seq the ring begins at: its oldest event's or, while it is empty, the
        next one to come (it always ends at ``published_seq``, with no gap)."""
        ring = self.ring
        return ring[0].seq if ring else self.published_seq + 1

    def seed_ring(self, page: list[Outbound]) -> int:
        """Events read from the store (a replay's page, oldest first, no gap) that reach
        up to where the ring begins go in front of it, so that the next resumers of the
        session replay them from memory; returns how many went in.

        The ring stays as :meth:`deliver` keeps it: gap-free up to ``published_seq``,
        within its events, its bytes and the budget, the newest kept. Events go in newest
        first and the first that does not fit, or does not come right before, ends it.
        Only while connections are attached, when the room follows the log (it gets
        every new event) so that the ring is the log's tail: not parked, and not once
        ``close_all`` has run (a deletion, a close, a stop: an actor retires through it),
        so a read that ends after that adds nothing.

        The replay's store read calls this, not the actor's task: that is safe because
        both run on the one event loop thread and this method does not await, so it
        never sees the ring halfway through a delivery, and the room checks here that
        the page still joins the ring (live events may have moved it on meanwhile).
        """
        if not self.outboxes or not self.ring_size or not page:
            return 0
        expected = self.ring_start - 1  # the seq the ring needs next, in front
        index = expected - page[0].seq  # a store page has no gap: seq i is at i - first
        if not 0 <= index < len(page):
            return 0
        ring = self.ring if self.ring is not None else self._new_ring()
        max_bytes, budget = self.ring_max_bytes, self.budget
        kept = 0
        while index >= 0 and len(ring) < self.ring_size:
            out = page[index]
            size = out.held
            if (
                out.seq != expected
                or self.ring_bytes + size > max_bytes
                or budget.used + size > budget.limit
            ):
                break
            ring.appendleft(out)
            out.ring = self._keeper
            self.ring_bytes += size
            budget.used += size
            kept += 1
            expected -= 1
            index -= 1
        if kept:
            self.ring = ring
        elif self.ring is None:
            self._forget_ring()  # the new one: nothing went in
        return kept

    def ring_page(self, after: int, through: int) -> list[Outbound] | None:
        """Events in ``(after, through]`` from the ring, a page at most; None when the
        ring does not reach back to ``after + 1``."""
        ring = self.ring
        if not ring or ring[0].seq > after + 1:
            return None
        start = after + 1 - ring[0].seq
        count = min(REPLAY_PAGE, through - after)
        page: list[Outbound] = []
        size = 0
        for out in itertools.islice(ring, start, start + count):
            if page and size + out.event_size > REPLAY_PAGE_BYTES:
                break
            page.append(out)
            size += out.event_size
        return page


class HeldConnections:
    """Connections a retiring actor handed over still open (``Stop`` with
    ``hand_over``), until someone tells them how the session ended: the first telling
    closes them all, and any handed over after it, with its code."""

    __slots__ = ("outboxes", "told")

    def __init__(self) -> None:
        self.outboxes: list[Outbox] = []
        self.told: tuple[CloseCode, str] | None = None

    def take(self, outboxes: list[Outbox]) -> None:
        """Handed over by an actor: they wait for the telling, or get it now."""
        for outbox in outboxes:
            outbox.handed_over = True
        if self.told is not None:
            close_every(outboxes, *self.told)
        else:
            self.outboxes += outboxes

    def tell(self, code: CloseCode, reason: str) -> None:
        """``closed`` and the close for each, which are let go (a hold may outlive
        them: its store's delete may never end); a later telling changes nothing (a
        stop that told them 1012 before a delete's outcome was known stays what they
        got)."""
        if self.told is None:
            self.told = (code, reason)
            close_every(self.outboxes, code, reason)
            self.outboxes = []


def close_every(
    outboxes: list[Outbox], code: CloseCode, reason: str, *, replays_go_on: bool = False
) -> None:
    """A ``closed`` frame, then the close, for each of ``outboxes`` (see
    :meth:`SessionRoom.close_all`)."""
    closed = Outbound(Closed(reason))
    for outbox in outboxes:
        outbox.push(closed)
        outbox.close(code, reason, replay_goes_on=replays_go_on)
