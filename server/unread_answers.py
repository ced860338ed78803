"""The account of HTTP answers written but not yet taken by their peers
(``UnreadAnswers``), which bounds what the server holds of them, and each peer's share
of it (``AnswerShare``), which bounds what one peer may take of the account. When the
account is full, a peer that holds less than an equal part of it gets room all the
same, at the expense of the peer that holds the most (:meth:`UnreadAnswers.make_room`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import structlog
from websockets.http11 import Response

from .responses import error_response

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
    the peer that holds the most, past its equal part, loses its oldest unread answer,
    then the next largest, until the answer fits (:meth:`make_room`).

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
        take: True once made, False if ``asker`` may not claim it (:meth:`may_claim`).

        The peer holding the most (``asker`` aside) loses its oldest unread answer, its
        connection dropped as a reader too slow for its answer is, and so on until the
        answer fits, none of them losing one while it holds no more than an equal part.
        Those peers held more than ``asker`` will with its answer: a reader on a slow
        link holding one page loses it only after every peer holding more has come
        down to it. It always makes enough room: past their equal parts, all but
        ``asker`` hold more than the account lacks (an equal part times the peers is
        the limit, and ``asker`` stays within its own). The account holds no more for
        it: what is dropped is given back before the answer is charged."""
        if not self.may_claim(asker, size):
            return False
        self._making_room = True
        try:
            while self.used and self.used + size > self.limit:
                largest = max(
                    (share for share in self._holding if share is not asker),
                    key=_held,
                    default=None,
                )
                # Counted again each time: a peer dropped to nothing counts no more.
                if largest is None or largest.used <= self.equal_part(asker):
                    return False  # bytes held outside any connection, for a moment
                dropped = largest.drop_oldest()
                if not dropped:
                    return False
                log.info("unread answer dropped for room", peer=largest.peer, bytes=dropped)
                if self._on_drop is not None:
                    self._on_drop()
        finally:
            self._making_room = False
        return True

    @staticmethod
    def busy() -> Response:
        return error_response(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            "internal",
            "busy: answers not yet read by their peers fill the server's buffer; retry later",
            {"Retry-After": "1"},
        )

    @staticmethod
    def over_share() -> Response:
        return error_response(
            http.HTTPStatus.TOO_MANY_REQUESTS,
            "rate_limited",
            "your answers not yet read fill your share of the server's buffer; read them, "
            "or retry later",
            {"Retry-After": "1"},
        )

    def _refused(self, full: str) -> Response:
        if self._on_refusal is not None:
            self._on_refusal(full)
        return self.over_share() if full == "peer" else self.busy()

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


def _held(share: AnswerShare) -> int:
    return share.used


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
        (:meth:`UnreadAnswers.make_room`; with ``make_room`` False, whether it could
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
                room = account.make_room if make_room else account.may_claim
                over_account = not room(self, size)
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

    def drop_oldest(self) -> int:
        """Drops the oldest of the connections holding bytes of this share (one that
        holds none now, a streamed answer between pages, is passed over): the bytes
        given back, 0 if none held any. Not a copy of the holders per answer dropped:
        room made from many small answers of one peer copied them all for each one
        (4,000 answers of 1 kB, 500 dropped: 1.8 million looked at)."""
        for holder in self.holders:
            dropped = holder.drop_unread()
            if dropped:
                # It let go of this share as it dropped (the one change to holders
                # while they are looked at): the loop ends before it goes on.
                return dropped
        return 0

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
