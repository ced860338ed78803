"""The account of HTTP answers written but not yet taken by their peers
(``UnreadAnswers``), which bounds what the server holds of them, and each peer's share
of it (``AnswerShare``), which bounds what one peer may take of the account. When the
account is full, a peer that holds less than an equal part of it gets room all the
same, at the expense of the peer that holds the most (:meth:`UnreadAnswers.make_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Protocol

import structlog
from websockets.http11 import Response

from .responses import answers_busy, answers_over_share

if TYPE_CHECKING:
    from .http_answer import AnsweringConnection

log = structlog.get_logger("bamboo_session.server")

# An answer this small is always sent: probes and error bodies stay served while big
# pages wait (a peer's connection costs more than that anyway).
SMALL_ANSWER_BYTES = 4096


class AnswerHolder(Protocol):
    """What holds bytes of the account: a connection whose answer its peer has not
    taken yet (http_answer.py ``AnsweringConnection``)."""

    def drop_unread(self) -> int:
        """Drops the connection, its answer unsent, and gives back at once what it held
        of the account: those bytes (0, and nothing dropped, if it held none)."""
        ...

    def behind_pace(self, now: float) -> int:
        """What :meth:`drop_unread` would give back, if its peer takes its answer too
        slowly to finish it in the time the answer has; else 0 (an answer on pace, or
        none held)."""
        ...


class UnreadAnswers:
    """Bytes of HTTP answers written but not yet taken by their peers, against a limit.

    A plain HTTP answer waits in its connection's buffer until the peer reads it (the
    kernel takes what fits in the socket's own buffer), outside every queue the server
    bounds: 2,000 peers asking for a 1 MiB page and never reading held 2.3 GB. Each
    answer is charged here until its bytes have left that buffer: its connection
    releases them as the buffer drains, and at the latest when it is lost
    (:meth:`AnsweringConnection.hold_answer`). One that would go past the limit gets 503
    instead (the first always fits), unless room is made for it (:meth:`make_room`).

    Each answer is charged to its peer's share too (:meth:`share`), which may hold at
    most ``peer_limit``: 150 connections of one peer reading a byte a second held the
    whole account for their page timeout (20 s each), and every other peer's pages got
    503 meanwhile. An answer that would take its peer past its share gets 429 instead
    (a peer's first always fits), while the account keeps room for the others; 503
    stays for an account that cannot take an answer, whoever asks.

    Shares alone do not keep the account from filling: peers at their share fill it
    (four at a quarter each, or five that each stop a page short), and every other
    peer's big answers got 503 for as long as those kept asking. So an answer the
    account cannot take, of a peer that would hold no more than an equal part of the
    account among the peers holding answers (itself counted), gets room made for it:
    the peer that holds the most, past its equal part, loses its oldest unread answer
    that its peer takes behind pace, then the next largest, until the answer fits
    (:meth:`make_room`). An answer taken at a pace that finishes it in its time is
    never dropped: peers on many addresses (an IPv6 /56 is 256 peers) made the equal
    part small, and room for them cut an honest peer's page while it read it at 1 MiB/s.

    A streamed answer's pieces wait for room instead (:meth:`AnswerShare.room`), in
    turn: one that looked for room as soon as its last piece left took it back before
    any that had waited longer, and 200 peers reading as fast as they could were
    dropped as too slow, their room taken by others again and again. A piece whose
    peer's share is full waits for its own peer's answers to drain, behind nobody's and
    holding up nobody else's; one that the account cannot take gets room made for it
    as an answer does."""

    __slots__ = (
        "_holding",
        "_making_room",
        "_on_drop",
        "_on_refusal",
        "_shares",
        "_waiting",
        "limit",
        "peer_limit",
        "used",
    )

    def __init__(
        self,
        limit: int,
        peer_limit: int | None = None,
        on_refusal: Callable[[str], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.limit = limit
        self.peer_limit = limit if peer_limit is None else peer_limit
        self.used = 0
        # Told "peer" or "server" for each answer refused because that share is full.
        self._on_refusal = on_refusal
        # Told of each unread answer dropped to make room for another peer's.
        self._on_drop = on_drop
        # The shares of peers whose answers hold a charge, or may soon: a share lives
        # as long as something holds it (a connection with a charge, a streamed answer,
        # a request being answered), so that a peer's connections share one, and the
        # shares of peers that hold nothing are not kept.
        self._shares: weakref.WeakValueDictionary[str | None, AnswerShare] = (
            weakref.WeakValueDictionary()
        )
        # The shares that hold bytes now: who an equal part is counted among, and who
        # may lose an answer to make room.
        self._holding: set[AnswerShare] = set()
        self._making_room = False  # releases then do not charge waiting pieces
        # Pieces of streamed answers waiting for room, first come first charged.
        self._waiting: list[tuple[AnswerShare, int, asyncio.Future[None]]] = []

    def share(self, peer: str | None) -> AnswerShare:
        """The share of ``peer`` (quotas.creator_key), one for all its connections."""
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = AnswerShare(self, peer)
        return share

    @property
    def full(self) -> bool:
        """Whether every answer but a small one would be refused now, to a peer that
        may have no room made for it."""
        return self.used >= self.limit

    def refusal_when_full(self, share_of: Callable[[], AnswerShare]) -> Response | None:
        """The refusal of every answer but a small one, if the account is full (and no
        room may be made for the peer asking, ``share_of()``), or the share of that
        peer is: then a request for a page is refused before its page is read, decoded
        and encoded. The share is looked for only when the account holds enough for a
        peer to be at its own."""
        if self.used < min(self.limit, self.peer_limit):
            return None
        return share_of().refusal()

    def equal_part(self, asker: AnswerShare) -> int:
        """An equal part of the account among the peers holding answers, ``asker``
        counted among them."""
        peers = len(self._holding) + (asker not in self._holding)
        return self.limit // peers

    def may_claim(self, asker: AnswerShare, size: int) -> bool:
        """Whether room may be made for an answer of ``size`` bytes of ``asker``'s: with
        it, the peer would hold no more than its share, nor than an equal part."""
        return asker.used + size <= min(self.peer_limit, self.equal_part(asker))

    def make_room(self, asker: AnswerShare, size: int) -> bool:
        """Room for an answer of ``size`` bytes of ``asker``'s, which the account cannot
        take: True once made (:meth:`answers_to_drop` dropped, their connections closed
        as a reader too slow for its answer is, their bytes given back before the answer
        is charged), else False, nothing dropped."""
        holders = self.answers_to_drop(asker, size)
        if holders is None:
            return False
        self._making_room = True
        try:
            for share, holder in holders:
                dropped = holder.drop_unread()
                log.info("unread answer dropped for room", peer=share.peer, bytes=dropped)
                if self._on_drop is not None:
                    self._on_drop()
        finally:
            self._making_room = False
        return True

    def answers_to_drop(
        self, asker: AnswerShare, size: int
    ) -> list[tuple[AnswerShare, AnswerHolder]] | None:
        """The answers to drop to make room for ``size`` bytes of ``asker``'s (each with
        its peer's share), or None if it may not claim room (:meth:`may_claim`) or too
        few may go; nothing dropped here (a HEAD asks whether its GET would get room).

        Only an answer behind pace may go (``AnswerHolder.behind_pace``): the peer
        holding the most (``asker`` aside), past an equal part, loses its oldest such
        answer, and so on, the largest again each time, until the answer fits; a peer
        none of whose answers may go is passed over for the next. None loses an answer
        while it holds no more than an equal part (counted again after each answer, a
        peer dropped to nothing counting no more): a reader on a slow link holding one
        page loses it only after every peer holding more has come down to it, or is on
        pace. Each answer is looked at once at most, whatever the number chosen."""
        if not self.may_claim(asker, size):
            return None
        lacking = self.used + size - self.limit if self.used else 0
        if lacking <= 0:
            return []
        now = asyncio.get_running_loop().time()
        # What each peer would hold once the answers chosen so far are dropped.
        left = {share: share.used for share in self._holding if share is not asker}
        peers = len(self._holding) + (asker not in self._holding)
        lookups: dict[AnswerShare, Generator[tuple[AnswerHolder, int]]] = {}
        chosen: list[tuple[AnswerShare, AnswerHolder]] = []
        try:
            while lacking > 0:
                part = self.limit // peers
                largest = max(left, key=left.__getitem__, default=None)
                if largest is None or left[largest] <= part:
                    return None  # what is past the equal parts is on pace, or unheld
                lookup = lookups.get(largest)
                if lookup is None:
                    lookup = lookups[largest] = largest.behind_pace(now)
                found = next(lookup, None)
                if found is None:
                    del left[largest]  # none of its answers may go: the next peer's
                    continue
                holder, held = found
                chosen.append((largest, holder))
                lacking -= held
                left[largest] -= held
                if left[largest] <= 0:
                    del left[largest]
                    peers -= 1
        finally:
            for lookup in lookups.values():
                lookup.close()
        return chosen

    def _refused(self, full: str) -> Response:
        if self._on_refusal is not None:
            self._on_refusal(full)
        return answers_over_share() if full == "peer" else answers_busy()

    def _charge_waiting(self) -> None:
        """Charges the waiting pieces that fit, first come first charged. One that the
        account cannot take, and no room may be made for (its peer past an equal part),
        keeps its place, and so do those behind it, but for a piece whose peer may claim
        room (:meth:`may_claim`): room is made for that one, as for its peer's plain
        answer, whoever waits before it. (A piece past its peer's equal part, first in
        line, held up the pieces of peers within theirs for as long as it waited, up to
        the page timeout, when those were dropped as too slow, while their plain
        answers got room at once.) One whose peer's share is full is passed over, and
        keeps its place for when its peer's answers drain."""
        waiting = self._waiting
        if not waiting or self._making_room:
            return
        kept: list[tuple[AnswerShare, int, asyncio.Future[None]]] = []
        held_up = False  # behind a piece that waits for room none may be made for
        for index, entry in enumerate(waiting):
            share, size, future = entry
            if future.done():
                continue
            if share.used and share.used + size > self.peer_limit:
                kept.append(entry)  # its peer's share is full: passed over
                continue
            fits = not self.used or self.used + size <= self.limit
            if (held_up or not fits) and not self.may_claim(share, size):
                kept.append(entry)  # in turn, behind the piece held up, or first of them
                held_up = True
                continue
            if not fits and not self.make_room(share, size):
                # Bytes held outside any connection, for a moment: all wait in turn.
                kept.extend(waiting[index:])
                break
            share.charge(size)
            future.set_result(None)
        self._waiting = kept


class AnswerShare:
    """One peer's part of :class:`UnreadAnswers`: what its answers hold (``used``),
    each byte charged here and to the account together, and the connections holding
    them (``holders``, oldest first). Whoever holds a charge holds the share it was
    made to, and gives it back through it."""

    __slots__ = ("__weakref__", "account", "holders", "peer", "used")

    def __init__(self, account: UnreadAnswers, peer: str | None = None) -> None:
        self.account = account
        self.peer = peer
        self.used = 0
        # Insertion-ordered: the first is the oldest, whose answer goes first.
        self.holders: dict[AnswerHolder, None] = {}

    def refusal(self, size: int | None = None, *, make_room: bool = True) -> Response | None:
        """None if an answer of ``size`` bytes fits now, room made for it if need be
        (:meth:`UnreadAnswers.make_room`; with ``make_room`` False, whether it would
        be, nothing dropped), else the answer to give instead: 503 when the account
        cannot take it (every peer is refused then), else 429 when it would take the
        peer past its share. Without ``size``, whether every answer but a small one
        would be refused now: then a request for a page is refused before its page is
        read, decoded and encoded."""
        account = self.account
        if size is None:
            over_share = self.used >= account.peer_limit
            over_account = account.used >= account.limit and not (
                not over_share and account.may_claim(self, SMALL_ANSWER_BYTES)
            )
        else:
            over_share = bool(self.used) and self.used + size > account.peer_limit
            over_account = bool(account.used) and account.used + size > account.limit
            if over_account and not over_share:
                if make_room:
                    over_account = not account.make_room(self, size)
                else:
                    over_account = account.answers_to_drop(self, size) is None
        if over_account:
            return account._refused("server")
        if over_share:
            return account._refused("peer")
        return None

    def admit(self, connection: AnsweringConnection, response: Response) -> Response:
        """``response``, charged until its bytes have left, or the refusal to send
        instead of it."""
        if not is_charged(connection, response):
            return response
        size = len(response.body)
        refusal = self.refusal(size)
        if refusal is not None:
            return refusal
        self.charge(size)
        connection.hold_answer(self, size)
        return response

    def charge(self, size: int) -> None:
        """Charges ``size`` bytes whether or not they fit: an answer :meth:`refusal`
        let through, or a piece read within room taken for it that came out larger (a
        page holds at least one message)."""
        if size > 0 and not self.used:
            self.account._holding.add(self)
        self.used += size
        self.account.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self.account.used -= size
        if self.used <= 0:
            self.account._holding.discard(self)
        self.account._charge_waiting()

    def hold(self, holder: AnswerHolder) -> None:
        """``holder`` holds bytes of this share, from now until :meth:`let_go`; one
        that holds already keeps its place among the oldest."""
        self.holders.setdefault(holder, None)

    def let_go(self, holder: AnswerHolder) -> None:
        self.holders.pop(holder, None)

    def behind_pace(self, now: float) -> Generator[tuple[AnswerHolder, int]]:
        """The connections holding bytes of this share taken behind pace, oldest first,
        each with what dropping it gives back. Lazy, over the holders themselves: a
        copy of them all per answer dropped made room from many small answers slow
        (4,000 of 1 kB, 500 dropped: 1.8 million looked at). They are dropped only once
        it is closed (:meth:`UnreadAnswers.make_room`): nothing changes them meanwhile."""
        for holder in self.holders:
            held = holder.behind_pace(now)
            if held:
                yield holder, held

    def room(self, size: int) -> asyncio.Future[None]:
        """A future done once ``size`` bytes of a streamed answer's next piece are
        charged, after the pieces that waited before it (at once if none waits that
        fits, and they fit). The caller hands the charge to its connection
        (``hold_answer``), or gives it up with :meth:`give_up_room`."""
        future = asyncio.get_running_loop().create_future()
        self.account._waiting.append((self, size, future))
        self.account._charge_waiting()
        return future

    def give_up_room(self, size: int, future: asyncio.Future[None]) -> None:
        """``future`` of :meth:`room` is not waited for any more: its charge goes back
        if it was made, else its place in the queue."""
        if future.done() and not future.cancelled():
            self.release(size)
            return
        future.cancel()
        with contextlib.suppress(ValueError):
            self.account._waiting.remove((self, size, future))
        self.account._charge_waiting()


def is_charged(connection: AnsweringConnection, response: Response) -> bool:
    """Whether ``response`` is charged, and may be refused: not if small, or to a peer
    already gone (nothing will be written)."""
    return len(response.body) > SMALL_ANSWER_BYTES and not connection.transport.is_closing()
