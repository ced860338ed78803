"""When the client reconnects after a drop: whether, how often, and how long it waits."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ReconnectPolicy:
    """Whether and how often to reconnect after a drop."""

    enabled: bool
    max_retries: int | None  # consecutive failed attempts before giving up; None: never
    backoff_initial: float
    backoff_max: float

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, initial * 2**attempt)]; the first retry
        waits at least a little, so a closing server is not hammered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2**attempt)
        return random.uniform(ceiling / 2 if attempt == 0 else 0, ceiling)

    def gives_up(self, attempt: int) -> bool:
        return self.max_retries is not None and attempt >= self.max_retries
