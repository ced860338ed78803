"""MemoryBudget: the bytes a server process holds on behalf of its peers, against one
limit.

Every buffer that grows with what peers send or fail to read charges it: each live
session's replay ring, each connection's send queue, each session's inbox. Each has a
limit of its own (in frames and in bytes); the budget bounds their sum, so that many
sessions that are each within their limits still cannot take the machine's memory.
Past the budget, rings keep nothing (replays read the store), inboxes take one request
at a time (readers wait), and a send queue that is backing up closes its connection
with 4429 (the client resumes from the log).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable
from typing import Final

NO_LIMIT: Final = sys.maxsize  # a limit that is never reached: one comparison, no branch


class MemoryBudget:
    """``used`` bytes against ``limit``. The buffers on the hot path update ``used``
    and compare it with ``limit`` directly (an attribute, not a call, per frame)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit if limit > 0 else NO_LIMIT  # bytes; 0 or less: no limit
        self.used = 0

    @property
    def exceeded(self) -> bool:
        return self.used > self.limit

    def charge(self, size: int) -> None:
        self.used += size

    def release(self, size: int) -> None:
        self.used -= size

    async def charged_while(self, size: int, waiting: Awaitable[object]) -> None:
        """``waiting`` with ``size`` charged meanwhile: a decoded request that waits
        for a place in flight or for room in its session's inbox, held by no queue
        (up to a frame's worth per connection). Given back when the wait ends, the
        caller then posting the request in the same step (the inbox charges it from
        there), or when it is cancelled (the connection's task stopped) and the
        request dropped."""
        self.used += size
        try:
            await waiting
        finally:
            self.used -= size
