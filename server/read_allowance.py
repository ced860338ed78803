"""What the pages a peer draws may cost, across its connections, requests and
reconnects: the peer's read allowance.

A page is the server reading stored data and sending it, asked for with a few bytes: a
resume's replay (a ``hello`` with an old ``last_seq``), a ``history`` or ``events``
request, a page of the HTTP API (of a history, of a log, of the session list, and each
page of a whole history). Charging it to the connection's byte rate would bound
nothing, since a peer that connects again gets a new connection, whose bucket starts
full (64 MiB of pages at the default share), and an HTTP request is a connection of its
own. So a page is charged to its *peer*: the user under auth (the token's ``sub``),
else the peer's address (an IPv6 peer's /64), as the creation rate counts them
(quotas.creator_key). A peer has one byte bucket of the connection's figures
(``--rate-limit-bytes`` a second, ``--rate-limit-bytes-burst`` at most), and a page
costs a sixteenth of the bytes sent (limits.REPLY_SHARE); the connection's byte rate is
left to what the peer sends.

In debt, what the peer draws next waits the debt before it is read: a replay's next
page, its first included (replay.py), a connection's next ``history`` or ``events``
page (page_requests.py), a whole history's next page (http_pages.py). Nothing of those
is refused: the pages come, only later. An HTTP request for a page that comes in debt
is answered 429 with ``Retry-After`` at once, before anything is read (http_pages.py).
A page let through to its read takes a page's worth at once (:meth:`ReadAllowance.
reserve`), given back when the page itself is charged (:meth:`ReadAllowance.settle`),
so that the pages of a peer read at the same time, on its many connections or in its
many requests, count each other's: checked before their reads and charged after them,
they all found the allowance as it was before any of them. A peer that
reconnects in a loop finds the debt its last connection left; one that resumes what it
missed on a flaky link, or reads a long log page by page, waits for nothing up to
64 MiB of pages, then gets 32 MiB a second, by default.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Final

from .limits import REPLY_SHARE, ByteRate

# Peers whose allowances are kept, the least recently used going first. A peer evicted
# in debt starts again full: it would take this many others drawing pages in between.
MAX_PEERS: Final = 10_000


class ReadAllowance:
    """One peer's allowance, shared by the pages of all its connections and requests."""

    __slots__ = ("_meter",)

    def __init__(self, meter: ByteRate) -> None:
        self._meter = meter

    def charge(self, size: int) -> None:
        """``size`` bytes of a page, framed to be sent: their share."""
        self._meter.charge(size // REPLY_SHARE)

    def reserve(self, size: int) -> int:
        """Charges ahead of its read a page of at most ``size`` bytes: the share
        charged, which :meth:`refund` gives back once the page's own size is charged
        (or none was read), so that the pages of requests in flight at once are counted
        before they are read."""
        share = size // REPLY_SHARE
        self._meter.charge(share)
        return share

    def refund(self, share: int) -> None:
        """Gives back ``share`` (of :meth:`reserve`), within the allowance's burst."""
        self._meter.refund(share)

    def settle(self, share: int, size: int) -> None:
        """The page :meth:`reserve` took ``share`` for came to ``size`` bytes (0: none
        was read, or it is not sent): ``share`` given back, the page's own charged."""
        self.refund(share)
        self.charge(size)

    def debt(self) -> float:
        """Seconds until the peer's debt is repaid; 0.0 within its allowance."""
        return self._meter.charge(0)

    async def repaid(
        self,
        ended_within: Callable[[float], Awaitable[bool]],
        on_wait: Callable[[float], None] | None = None,
    ) -> bool:
        """True once the peer's debt is repaid (at once when it has none). Whoever waits
        says how, with ``ended_within(delay)``: it returns after ``delay`` seconds at
        most, True if the waiter has ended meanwhile (its connection lost, its outbox
        closing), and then this returns False at once, without waiting the rest of the
        debt. Another of the peer's connections may add to the debt meanwhile: waited
        too, so that together they stay within the rate. The time actually waited goes
        to ``on_wait``."""
        debt = self.debt()
        if debt <= 0:
            return True
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while debt > 0:
                if await ended_within(debt):
                    return False
                debt = self.debt()
            return True
        finally:
            if on_wait is not None:
                on_wait(loop.time() - started)


class ReadAllowances:
    """The peers' allowances of one server process: the one owner of their debts."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate  # bytes a second, a page costing a REPLY_SHARE-th; 0: no limit
        self.burst = burst
        self._clock = clock
        self._peers: collections.OrderedDict[str, ReadAllowance] = collections.OrderedDict()

    def of(self, peer: str | None) -> ReadAllowance | None:
        """The allowance of ``peer`` (quotas.creator_key); None without a limit, or
        without a peer to charge (no address: not a network peer)."""
        if self.rate <= 0 or peer is None:
            return None
        allowance = self._peers.get(peer)
        if allowance is None:
            allowance = self._peers[peer] = ReadAllowance(
                ByteRate(self.rate, self.burst, self._clock)
            )
            while len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return allowance
