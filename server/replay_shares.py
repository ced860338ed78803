"""Each peer's share of the memory budget for the pages of its resumes' replays.

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
pages, until the peer's pages being sent make room; a peer that holds no page always
gets one. Nothing is refused and nobody is closed for it: the slow peer's replays come
more slowly, at the pace it reads them all, and every page it waits behind is either
read on, or given up on after ``--replay-page-timeout`` without progress (replay.py).
A page waits for its own peer's share only, never for the budget as a whole: however
many peers hold theirs, another peer's resume is not held back behind them
(tests/test_replay_shares_peers.py); what they hold past the budget is paid for by
live send queues that back up (outbox.py).
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Awaitable, Callable

from .budget import NO_LIMIT


class ReplayShare:
    """The replay pages one peer holds (``used``, bytes), against ``limit``, and those
    waiting for room, first come first charged."""

    __slots__ = ("__weakref__", "_waiting", "limit", "peer", "used")

    def __init__(self, peer: str, limit: int) -> None:
        self.peer = peer
        self.limit = limit
        self.used = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def take_now(self, size: int) -> bool:
        """Charges ``size`` and returns True if it fits now (no page of the peer's waits
        before it, and the peer holds none or stays within its share); else False,
        nothing charged. Without waiting: a fast reader's page costs no wait."""
        if self._waiting or (self.used and self.used + size > self.limit):
            return False
        self.used += size
        return True

    async def room(self, size: int, ended: Callable[[], Awaitable[None]]) -> bool:
        """Charges ``size`` once it fits, in turn with the peer's other waiting pages:
        True then. False, nothing charged, if ``ended()`` returns first (the waiter's
        outbox closing)."""
        if self.take_now(size):
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiting.append(entry)
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
                self._charge_waiting()  # those behind it may fit now
        return not waiter.cancelled()

    def may_grow(self, reserved: int, size: int) -> bool:
        """Whether a page charged ``reserved`` may be held at ``size`` instead: no
        bigger, or the peer holds no other page, or it stays within its share. A page
        is charged a page's worth before it is read, and a page of one event is as big
        as the event: the pages of a peer's resumers read at once (waiting for the
        store) would otherwise grow together past the share, fourfold."""
        others = self.used - reserved
        return size <= reserved or not others or others + size <= self.limit

    def settle(self, reserved: int, size: int) -> None:
        """The page ``reserved`` was charged for came to ``size`` bytes (0: none to
        send): charged that instead."""
        self.used += size - reserved
        if size < reserved:
            self._charge_waiting()

    def give_back(self, size: int) -> None:
        """A page of ``size`` bytes is sent, or given up on."""
        self.used -= size
        self._charge_waiting()

    def _charge_waiting(self) -> None:
        waiting = self._waiting
        while waiting:
            size, waiter = waiting[0]
            if self.used and self.used + size > self.limit:
                return
            waiting.popleft()
            self.used += size
            waiter.set_result(None)


class ReplayShares:
    """The peers' replay shares of one server process: one per peer for as long as a
    connection of its holds it (a weak mapping), so that its connections share it."""

    def __init__(self, budget: int, part: float) -> None:
        # No total, no share: a page is bounded by the budget alone, or by nothing.
        self.limit = int(budget * part) if 0 < budget < NO_LIMIT else NO_LIMIT
        self._shares: weakref.WeakValueDictionary[str, ReplayShare] = weakref.WeakValueDictionary()

    def of(self, peer: str | None) -> ReplayShare | None:
        """The share of ``peer`` (quotas.creator_key); None without a budget, or
        without a peer to charge (no address: not a network peer)."""
        if self.limit == NO_LIMIT or peer is None:
            return None
        share = self._shares.get(peer)
        if share is None:
            share = self._shares[peer] = ReplayShare(peer, self.limit)
        return share
