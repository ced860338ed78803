"""When the client reconnects after a drop: whether, how often, how long it waits, and
after which connection the waits start again from the first (:func:`recovered`)."""

from __future__ import annotations

import random
from dataclasses import dataclass

# Seconds after which a welcomed connection counts as a recovery even if nothing new came
# on it (a quiet session's): see :func:`recovered`.
STABLE_AFTER = 10.0


def recovered(lasted: float, progressed: bool) -> bool:
    """Whether a welcomed connection that ended after ``lasted`` seconds was a recovery,
    after which the backoff starts again from its first wait (and ``max_retries`` counts
    from 0): it did useful work (``progressed``: an event new to the client, or an ack
    of one of its publishes, came on it), or it held ``STABLE_AFTER``. Any other is a
    failed attempt, however it ended (the server's close, a cut, the client's own
    keepalive): a server that welcomes and then fails every connection at once is backed
    off from, while a connection cut after serving events (a slow consumer's, dropped by
    its keepalive while the application stalled) is resumed at once."""
    return progressed or lasted >= STABLE_AFTER


@dataclass(frozen=True)
class ReconnectPolicy:
    """Whether and how often to reconnect after a drop."""

    enabled: bool
    # Failed attempts in a row (since the last connection that recovered) before giving
    # up; None: never.
    max_retries: int | None
    backoff_initial: float
    backoff_max: float

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)]; the first retry
        waits at least a little, so a closing server is not hammered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2**attempt)
        return random.uniform(ceiling / 2 if attempt == 0 else 0, ceiling)

    def gives_up(self, attempt: int) -> bool:
        return self.max_retries is not None and attempt >= self.max_retries
