"""Each peer's share of the memory budget for the pages of its resumes' replays, and
the bound on what all peers' pages hold together.

A replay page is held, and charged to the budget, until it is in its socket's buffer
(replay_charge.py): a reader that is slow but steady keeps it for as long as it takes
to read it, and is never closed for that. So one peer's many connections, each
resuming and reading a KiB a second, held a page each (about 282 KiB), and 900 of
them, from one address, held the whole of the default 256 MiB budget: the viewers of
other peers' sessions were then closed with 4429 (send queue full) while those slow
readers went on.

So the replay pages that one peer (quotas.creator_key: the user under auth, else the
address, an IPv6 peer's /64, as for the read allowance) holds at once, over all its
connections, are bounded (``--replay-peer-share`` of ``--memory-budget``), as its
unread HTTP answers are (unread_answers.py). A page that would take its peer past
that waits before it is read, holding nothing, in turn with the peer's other waiting
pages, until the peer's pages being sent make room. Nothing is refused and nobody is
closed for it: the slow peer's replays come more slowly, at the pace it reads them
all, and every page it waits behind is either read on, or given up on after
``--replay-page-timeout`` without progress (replay.py).

Shares alone did not bound what many peers hold together: five addresses' stalled
resumers, each peer within its quarter, held 4.1 MB of a 4 MiB budget, and the live
viewers of everyone else were closed with 4429 at their next burst. So the pages of
all peers together are bounded too (``--replay-total-share`` of the budget, half by
default, leaving the other half to live send queues, rings and inboxes):

- a peer holding no page gets one at once, whatever the others hold, so a light
  peer's resume is never held behind heavy ones (tests/test_replay_shares_peers.py);
  what all hold together stays within the total plus a page per peer;
- any further page needs room in its peer's share and under the total. While the
  total is full, the room pages given back make goes first to the pages of peers
  holding less than an equal part of the total (the total over the peers holding
  pages), first come first served, then to the others' in turn; a peer's own pages
  keep their order.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Awaitable, Callable

from .budget import NO_LIMIT


class ReplayShare:
    """The replay pages one peer holds (``used``, bytes), against ``limit`` and under
    the ``total`` of all peers, and those waiting for room, first come first charged."""

    __slots__ = ("__weakref__", "_waiting", "limit", "peer", "total", "used")

    def __init__(self, peer: str, limit: int, total: ReplayTotal) -> None:
        self.peer = peer
        self.limit = limit
        self.total = total
        self.used = 0
        # (size, waiter, arrival): arrival orders pages of different peers.
        self._waiting: collections.deque[tuple[int, asyncio.Future[None], int]] = (
            collections.deque()
        )

    def take_now(self, size: int) -> bool:
        """Charges ``size`` and returns True if it fits now (no page of the peer's waits
        before it, and the peer holds none, or stays within its share while the total
        has room and no other peer's page waits for it); else False, nothing charged.
        Without waiting: a fast reader's page costs no wait."""
        used, total = self.used, self.total
        if self._waiting or (
            used and (used + size > self.limit or total.blocked or total.used + size > total.limit)
        ):
            return False
        if not used and size:
            total.holders += 1
        self.used = used + size
        total.used += size
        return True

    async def room(self, size: int, ended: Callable[[], Awaitable[None]]) -> bool:
        """Charges ``size`` once it fits, in turn with the peer's other waiting pages
        and the total's waiting peers: True then. False, nothing charged, if
        ``ended()`` returns first (the waiter's outbox closing)."""
        if self.take_now(size):
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter, self.total.arrival())
        self._waiting.append(entry)
        self._charge_waiting()  # first of its peer's, it may only wait for the total
        ending = asyncio.ensure_future(ended())
        try:
            await asyncio.wait((waiter, ending), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            if waiter.done():
                # Charged just before its task was cancelled (its connection ended):
                # nobody will send that page, so nobody else would give it back.
                self.give_back(size)
            raise
        finally:
            ending.cancel()
            if not waiter.done():
                waiter.cancel()
                self._waiting.remove(entry)
                # Those behind it, here or elsewhere, may fit now.
                self._wait_for_total()
                self.total.charge_waiting()
        return not waiter.cancelled()

    def may_grow(self, reserved: int, size: int) -> bool:
        """Whether a page charged ``reserved`` may be held at ``size`` instead: no
        bigger, or the peer holds no other page, or it stays within its share and the
        total. A page is charged a page's worth before it is read, and a page of one
        event is as big as the event: the pages of a peer's resumers read at once
        (waiting for the store) would otherwise grow together past the share, fourfold."""
        others, total = self.used - reserved, self.total
        return (
            size <= reserved
            or not others
            or (others + size <= self.limit and total.used - reserved + size <= total.limit)
        )

    def settle(self, reserved: int, size: int) -> None:
        """The page ``reserved`` was charged for came to ``size`` bytes (0: none to
        send): charged that instead."""
        self._add(size - reserved)
        # Smaller: pages waiting here or for the total may fit now. Bigger: the peer's
        # next waiting page may no longer fit its share, and must leave the total's turn.
        if size != reserved and (self._waiting or self.total.blocked):
            self._charge_waiting()

    def give_back(self, size: int) -> None:
        """A page of ``size`` bytes is sent, or given up on."""
        total = self.total
        self.used -= size
        total.used -= size
        if size and not self.used:
            total.holders -= 1
        if self._waiting or total.blocked:
            self._charge_waiting()

    def next_size(self) -> int:
        return self._waiting[0][0]

    def next_arrival(self) -> int:
        return self._waiting[0][2]

    def charge_next(self) -> None:
        """Charges the peer's first waiting page (the total has room for it)."""
        size, waiter, _ = self._waiting.popleft()
        self._add(size)
        waiter.set_result(None)
        self._wait_for_total()

    def _add(self, size: int) -> None:
        before, total = self.used, self.total
        self.used = used = before + size
        total.used += size
        if (used > 0) != (before > 0):
            total.holders += 1 if used > 0 else -1

    def _charge_waiting(self) -> None:
        if self._waiting:
            self._wait_for_total()
        if self.total.blocked:
            self.total.charge_waiting()

    def _wait_for_total(self) -> None:
        """Puts the peer in the total's turn while its first waiting page fits its
        share (or it holds none); out of it otherwise."""
        waiting = self._waiting
        if waiting and not (self.used and self.used + waiting[0][0] > self.limit):
            self.total.blocked[self] = None
        else:
            self.total.blocked.pop(self, None)


class ReplayTotal:
    """What the replay pages of all peers hold together (``used``, bytes), against
    ``limit``; ``holders``: how many peers hold any. ``blocked``: the peers whose first
    waiting page fits their own share, and so waits for the total only."""

    __slots__ = ("_arrivals", "blocked", "holders", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.holders = 0
        self._arrivals = 0  # numbers the waiting pages, first come first served
        self.blocked: dict[ReplayShare, None] = {}

    def arrival(self) -> int:
        self._arrivals += 1
        return self._arrivals

    def charge_waiting(self) -> None:
        """Gives the room there is to the blocked peers' first waiting pages, a page at
        a time: a peer holding none first (at once), then those holding less than an
        equal part of the total, then the rest, each group first come first served.
        The first that does not fit stops it, so that a big page is not passed by
        smaller ones for ever."""
        blocked = self.blocked
        while blocked:
            share = min(blocked, key=self._precedence) if len(blocked) > 1 else next(iter(blocked))
            if share.used and self.used + share.next_size() > self.limit:
                return
            share.charge_next()

    def _precedence(self, share: ReplayShare) -> tuple[bool, bool, int]:
        equal_part = self.limit // max(self.holders, 1)
        return (share.used > 0, share.used >= equal_part, share.next_arrival())


class ReplayShares:
    """The peers' replay shares of one server process: one per peer for as long as a
    connection of its holds it (a weak mapping), so that its connections share it."""

    def __init__(self, budget: int, part: float, total_part: float) -> None:
        # No budget, no share: a page is bounded by nothing.
        bounded = 0 < budget < NO_LIMIT
        self.limit = int(budget * part) if bounded else NO_LIMIT
        self.total = ReplayTotal(int(budget * total_part) if bounded else NO_LIMIT)
        self._shares: weakref.WeakValueDictionary[str, ReplayShare] = weakref.WeakValueDictionary()

    def of(self, peer: str | None) -> ReplayShare | None:
        """The share of ``peer`` (quotas.creator_key); None without a budget, or
        without a peer to charge (no address: not a network peer)."""
        if self.limit == NO_LIMIT or peer is None:
            return None
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = ReplayShare(peer, self.limit, self.total)
        return share
