"""The account of HTTP answers written but not yet taken by their peers
(``UnreadAnswers``), which bounds what the server holds of them, and each peer's share
of it (``AnswerShare``), which bounds what one peer may take of the account."""

from __future__ import annotations

import asyncio
import contextlib
import http
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from websockets.http11 import Response

from .responses import error_response

if TYPE_CHECKING:
    from .http_wire import BambooConnection


# An answer this small is always sent: probes and error bodies stay served while big
# pages wait (a peer's connection costs more than that anyway).
SMALL_ANSWER_BYTES = 4096


class UnreadAnswers:
    """Bytes of HTTP answers written but not yet taken by their peers, against a limit.

    A plain HTTP answer waits in its connection's buffer until the peer reads it (the
    kernel takes what fits in the socket's own buffer), outside every queue the server
    bounds: 2,000 peers asking for a 1 MiB page and never reading held 2.3 GB. Each
    answer is charged here until its bytes have left that buffer: its connection
    releases them as the buffer drains, and at the latest when it is lost
    (:meth:`BambooConnection.hold_answer`). One that would go past the limit gets 503
    instead (the first always fits).

    Each answer is charged to its peer's share too (:meth:`share`), which may hold at
    most ``peer_limit``: 150 connections of one peer reading a byte a second held the
    whole account for their page timeout (20 s each), and every other peer's pages got
    503 meanwhile. An answer that would take its peer past its share gets 429 instead
    (a peer's first always fits), while the account keeps room for the others; 503
    stays for an account that cannot take an answer, whoever asks.

    A streamed answer's pieces wait for room instead (:meth:`AnswerShare.room`), in
    turn: one that looked for room as soon as its last piece left took it back before
    any that had waited longer, and 200 peers reading as fast as they could were
    dropped as too slow, their room taken by others again and again. A piece whose
    peer's share is full waits for its own peer's answers to drain, behind nobody's and
    holding up nobody else's."""

    __slots__ = ("_on_refusal", "_shares", "_waiting", "limit", "peer_limit", "used")

    def __init__(
        self,
        limit: int,
        peer_limit: int | None = None,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.limit = limit
        self.peer_limit = limit if peer_limit is None else peer_limit
        self.used = 0
        # Told "peer" or "server" for each answer refused because that share is full.
        self._on_refusal = on_refusal
        # The shares of peers whose answers hold a charge, or may soon: a share lives
        # as long as something holds it (a connection with a charge, a streamed answer,
        # a request being answered), so that a peer's connections share one, and the
        # shares of peers that hold nothing are not kept.
        self._shares: weakref.WeakValueDictionary[str | None, AnswerShare] = (
            weakref.WeakValueDictionary()
        )
        # Pieces of streamed answers waiting for room, first come first charged.
        self._waiting: list[tuple[AnswerShare, int, asyncio.Future[None]]] = []

    def share(self, peer: str | None) -> AnswerShare:
        """The share of ``peer`` (quotas.creator_key), one for all its connections."""
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = AnswerShare(self)
        return share

    @property
    def full(self) -> bool:
        """Whether every answer but a small one would be refused now, to any peer."""
        return self.used >= self.limit

    def refusal_when_full(self, share_of: Callable[[], AnswerShare]) -> Response | None:
        """The refusal of every answer but a small one, if the account is full, or the
        share of the peer asking (``share_of()``) is: then a request for a page is
        refused before its page is read, decoded and encoded. The share is looked for
        only when the account holds enough for a peer to be at its own."""
        if self.used >= self.limit:
            return self._refused("server")
        if self.used < self.peer_limit:
            return None
        return share_of().refusal()

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
        """Charges the waiting pieces that fit, first come first charged, none past the
        first that the account cannot take; one whose peer's share is full is passed
        over, and keeps its place for when its peer's answers drain."""
        waiting = self._waiting
        if not waiting:
            return
        kept: list[tuple[AnswerShare, int, asyncio.Future[None]]] = []
        for index, (share, size, future) in enumerate(waiting):
            if future.done():
                continue
            if share.used and share.used + size > self.peer_limit:
                kept.append((share, size, future))
                continue
            if self.used and self.used + size > self.limit:
                kept.extend(waiting[index:])
                break
            share.charge(size)
            future.set_result(None)
        self._waiting = kept


class AnswerShare:
    """One peer's part of :class:`UnreadAnswers`: what its answers hold (``used``),
    each byte charged here and to the account together. Whoever holds a charge holds
    the share it was made to, and gives it back through it."""

    __slots__ = ("__weakref__", "account", "used")

    def __init__(self, account: UnreadAnswers) -> None:
        self.account = account
        self.used = 0

    def refusal(self, size: int | None = None) -> Response | None:
        """None if an answer of ``size`` bytes fits now, else the answer to give
        instead: 503 when the account cannot take it (every peer is refused then), else
        429 when it would take the peer past its share. Without ``size``, whether every
        answer but a small one would be refused now: then a request for a page is
        refused before its page is read, decoded and encoded."""
        account = self.account
        if size is None:
            over_share = self.used >= account.peer_limit
            over_account = account.used >= account.limit
        else:
            over_share = bool(self.used) and self.used + size > account.peer_limit
            over_account = bool(account.used) and account.used + size > account.limit
        if over_account:
            return account._refused("server")
        if over_share:
            return account._refused("peer")
        return None

    def admit(self, connection: BambooConnection, response: Response) -> Response:
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
        self.used += size
        self.account.used += size

    def release(self, size: int) -> None:
        self.used -= size
        self.account.used -= size
        self.account._charge_waiting()

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


def is_charged(connection: BambooConnection, response: Response) -> bool:
    """Whether ``response`` is charged, and may be refused: not if small, or to a peer
    already gone (nothing will be written)."""
    return len(response.body) > SMALL_ANSWER_BYTES and not connection.transport.is_closing()
