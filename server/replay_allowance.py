"""What resumes' replays may cost one peer, across its connections and reconnects.

A replay is the server reading a session's log and sending it, asked for with a few
bytes: a ``hello`` with an old ``last_seq``. Charging it to the connection's byte rate
would bound nothing, since a peer that disconnects and resumes again gets a new
connection, whose bucket starts full (64 MiB of replay at the default share). So a
replay is charged to its *peer*: the user under auth (the token's ``sub``), else the
peer's address (an IPv6 peer's /64), as the creation rate counts them
(quotas.creator_key). A peer has a byte bucket of the connection's figures
(``--rate-limit-bytes`` a second, ``--rate-limit-bytes-burst`` at most), and a page of
replay costs a sixteenth of its frames' bytes (limits.REPLY_SHARE), as a ``history``
or ``events`` page does. In debt, a replay waits the debt before its next page, its
first included: nothing is refused, and the missed events still come, every one, in
order, once, only later. A peer that reconnects in a loop finds the debt its last
connection left; one that resumes what it missed on a flaky link costs next to
nothing (a resume is as big as what it missed), and reads a whole long log at 32 MiB a
second past its first 64 MiB by default.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Final

from .limits import REPLY_SHARE, ByteRate
from .outbox import Outbox

# Peers whose allowances are kept, the least recently used going first. A peer evicted
# in debt starts again full: it would take this many others replaying in between.
MAX_PEERS: Final = 10_000


class ReplayAllowance:
    """One peer's allowance, shared by the replays of all its connections."""

    __slots__ = ("_meter", "_on_wait")

    def __init__(self, meter: ByteRate, on_wait: Callable[[float], None] | None) -> None:
        self._meter = meter
        self._on_wait = on_wait

    def charge(self, frames: list[bytes]) -> None:
        """A page of replay framed for sending: its share of the frames' bytes."""
        self._meter.charge(sum(map(len, frames)) // REPLY_SHARE)

    async def repaid(self, outbox: Outbox) -> bool:
        """Returns once the peer's debt is repaid (True), or the outbox is closing
        (False: the session closed, the server stopping; the close goes out without
        waiting the debt); a connection that ends cancels its writer, and this wait
        with it. Another of the peer's connections may add to the debt meanwhile:
        waited too, so that together they stay within the rate. The time actually
        waited goes to ``on_wait``."""
        debt = self._meter.charge(0)
        if debt <= 0:
            return outbox.closing is None
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            while debt > 0 and outbox.closing is None:
                await outbox.closing_within(debt)
                debt = self._meter.charge(0)
        finally:
            if self._on_wait is not None:
                self._on_wait(loop.time() - started)
        return outbox.closing is None


class ReplayAllowances:
    """The peers' allowances of one server process."""

    def __init__(
        self,
        rate: float,
        burst: float,
        on_wait: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate  # bytes a second, a replay costing a REPLY_SHARE-th; 0: no limit
        self.burst = burst
        self._on_wait = on_wait
        self._clock = clock
        self._peers: collections.OrderedDict[str, ReplayAllowance] = collections.OrderedDict()

    def of(self, peer: str | None) -> ReplayAllowance | None:
        """The allowance of ``peer`` (quotas.creator_key); None without a limit, or
        without a peer to charge (no address: not a network peer)."""
        if self.rate <= 0 or peer is None:
            return None
        allowance = self._peers.get(peer)
        if allowance is None:
            meter = ByteRate(self.rate, self.burst, self._clock)
            allowance = self._peers[peer] = ReplayAllowance(meter, self._on_wait)
            while len(self._peers) > MAX_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return allowance
