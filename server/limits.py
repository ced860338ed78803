"""Limits on what one peer may cost: frames and bytes per second, connections per user.

:class:`TokenBucket` meters a connection's frames: over the rate, a frame is answered
with ``rate_limited`` and not processed; a batch frame costs a token per item. Refusals
are metered by a second bucket; a peer that keeps sending past its refusals budget is
closed with 4429.
:class:`ByteRate` meters the bytes of a connection's frames, every frame read (data,
continuation and control frames alike) costing its payload and ``FRAME_BYTES`` more:
over the rate, the connection stops reading until the debt is repaid, so the peer's
sends wait on TCP; nothing is refused. What a frame costs the server is its parse and
its decode (a dense 1 MiB frame takes tens of milliseconds, ten thousand empty Pongs as
long), and a count of messages alone bounds neither: so a data frame, once decoded,
costs what it weighs decoded beyond its bytes too (``FREE_VALUE_BYTES`` per free-form
value and batch item; a frame refused in its decode, as many as its bytes could hold),
and a batch ``FRAME_BYTES`` per item after the first, charged by the connection's
reader (connection.py). The pages a peer draws (a resume's
replay, ``history`` and ``events``, the HTTP API's pages) are charged at the same
figures, a sixteenth of their size (``REPLY_SHARE``), not to the connection but to the
peer, across its connections and requests (read_allowance.py).
:class:`ConnectionCounter` caps the concurrent connections of one user;
:func:`connection_cap` those of the whole process (server/http_wire.py applies it).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; full at the start.
    A ``rate`` of 0 or less means no limit."""

    __slots__ = ("_clock", "_stamp", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def take(self, count: float = 1.0) -> bool:
        """Spends ``count`` tokens if there are that many, else none."""
        rate = self.rate
        if rate <= 0:
            return True
        # _refilled's arithmetic written out: this runs for every frame read.
        now = self._clock()
        tokens = self._tokens + (now - self._stamp) * rate
        self._stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens >= count:
            self._tokens = tokens - count
            return True
        self._tokens = tokens
        return False

    def past_burst(self) -> float:
        """Refills to now, as a take does; what the refill brought past ``burst`` (the
        tokens the cap threw away)."""
        now = self._clock()
        tokens = self._tokens + (now - self._stamp) * self.rate
        self._stamp = now
        self._tokens = min(tokens, self.burst)
        return tokens - self._tokens

    def refund(self, count: float) -> None:
        """Gives back ``count`` tokens taken ahead of a use that turned out smaller (or
        none), never past ``burst``: what refilled meanwhile is not paid twice."""
        if self.rate > 0:
            self._tokens = min(self.burst, self._refilled() + count)

    def _refilled(self) -> float:
        now = self._clock()
        tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return tokens


# What a page sent costs against its peer's read allowance (the byte rate's figures),
# per byte: a sixteenth. A page is read from the log as it was stored and sent as read
# (about 1.3 ms of the server's CPU a MiB here), where a frame read is parsed and
# decoded (a dense 1 MiB frame takes tens of milliseconds): so a peer's pages are
# bounded at 16 times the read rate (32 MiB a second by default, 64 MiB at once), which
# bounds what a peer asking for big pages with small requests costs, and leaves a
# client reading a long log page by page at the speed of its round trips.
REPLY_SHARE = 16

# What each frame read costs beyond its payload: its parse (and a Ping's Pong), so that
# a flood of empty frames is metered too. 2 MiB a second is 2,048 of them at most.
FRAME_BYTES = 1024


class ByteRate(TokenBucket):
    """A bucket of bytes that a frame is always taken from, into debt if need be: the
    debt is how long the connection then stops reading (http_wire.py), so a frame larger
    than the allowance left costs a wait, never a refusal."""

    __slots__ = ()

    def charge(self, size: int) -> float:
        """Counts ``size`` bytes; the seconds until the debt is repaid (0.0 when within
        the allowance)."""
        rate = self.rate
        if rate <= 0:
            return 0.0
        # _refilled's arithmetic written out (no call, no min()): a frame read is
        # charged here, and again once decoded (sliced_reads.py).
        now = self._clock()
        tokens = self._tokens + (now - self._stamp) * rate
        self._stamp = now
        if tokens > self.burst:
            tokens = self.burst
        self._tokens = tokens = tokens - size
        return 0.0 if tokens >= 0 else -tokens / rate


class FrameLimiter:
    """One connection's frame rate: :meth:`admit` says whether to process a frame,
    :meth:`exhausted` whether the peer has been refused too much and must go."""

    __slots__ = ("_credit", "_frames", "_refusals", "refused")

    def __init__(
        self,
        rate: float,
        burst: float,
        refusals: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._frames = TokenBucket(rate, burst, clock)
        # ``refusals`` refused frames within about a second are tolerated (a client
        # that backs off on rate_limited recovers); more means it is not listening.
        self._refusals = TokenBucket(max(1, refusals), max(1, refusals), clock)
        self.refused = 0
        self._credit = 0.0  # frames a hold let come unread, past the burst (held)

    def admit(self) -> bool:
        return self._frames.take() or self._spend_credit()

    def _spend_credit(self) -> bool:
        if self._credit < 1:
            return False
        self._credit -= 1
        return True

    def admit_items(self, extra: int) -> bool:
        """A batch frame, already admitted as one frame, costs ``extra`` tokens more
        (one per item beyond the first); without them it is refused as a whole, and
        only its frame's token is spent."""
        return self._frames.take(extra)

    def held(self, frames: int) -> None:
        """The reader took no frame since the last, held by the store on the peer's
        behalf: the frames that came meanwhile, read now in one go, are taken as they
        came, up to ``frames`` past the burst (what it would have read on meanwhile),
        spent once the bucket is empty. Its rate over time is bounded as before: these
        are tokens the hold's time refilled, which the burst's cap would have thrown away."""
        frames_bucket = self._frames
        if frames_bucket.rate > 0:
            self._credit = min(self._credit + frames_bucket.past_burst(), frames)

    def refuse(self) -> bool:
        """Counts a refused frame; True once the refusals budget is spent."""
        self.refused += 1
        return not self._refusals.take()


class TooManyConnections(Exception):
    """The user already has the most concurrent connections allowed: close 4429."""


class TooManySessionConnections(Exception):
    """The session already has the most connections allowed on this process (each
    attach and leave is presence to all the others): close 4429."""


class ConnectionCounter:
    """Concurrent connections per user; ``limit`` 0 or less means no limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, user: str) -> None:
        count = self._counts.get(user, 0)
        if 0 < self.limit <= count:
            raise TooManyConnections(f"more than {self.limit} connections for this user")
        self._counts[user] = count + 1

    def release(self, user: str) -> None:
        count = self._counts.get(user, 0) - 1
        if count > 0:
            self._counts[user] = count
        else:
            self._counts.pop(user, None)

    def count(self, user: str) -> int:
        return self._counts.get(user, 0)


# The most connections a process keeps open by default, whatever its descriptors allow:
# each costs some 12 KiB idle, 16 KiB once attached, outside --memory-budget.
DEFAULT_MAX_CONNECTIONS = 10_000


def connection_cap(configured: int | None) -> int:
    """Connections the process keeps open at once (0: no cap). ``None`` means half the
    descriptors it may open (its soft RLIMIT_NOFILE, read after serve raised it), at
    most ``DEFAULT_MAX_CONNECTIONS``: the other half is the store's (a JSONL store's
    logs take up to a quarter at their peak), the kernel's backlog, which is accepted
    in a burst before any connection over the cap is closed, and the process's own."""
    if configured is not None:
        return configured
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 2))
