"""CommandFailures: what the log says of session commands other than appends (an
attach, a state change, a timer's tick, a ``hello`` the store did not answer in time)
that the store failed, once per outage and then in counts.

A store that fails (disk full, Redis down) fails the attach of every ``hello`` that
comes: a thousand viewers reconnecting would write a thousand lines. So, as for appends
(append_failures.py), the first failure of an outage is logged at once with its error
(``storage failed``, the command, in the session's context); later ones are counted by
command and told in a ``storage failing`` line at most once per ``SUMMARY_EVERY``
seconds, when one more fails. An outage ends once none has failed for ``QUIET``
seconds: what no line told of it yet is told then, at the next failure (the first of
the next outage, logged at once too) or when the manager closes (``flush``).
"""

from __future__ import annotations

import time
from typing import Final

import structlog

from bamboo_session.persistence.errors import StorageError

from .append_failures import SUMMARY_EVERY, process_wide

log = structlog.get_logger("bamboo_session.actor")

# Seconds without a failed command after which the next failure begins a new outage.
QUIET: Final = SUMMARY_EVERY


class CommandFailures:
    """The outage under way, if any, as the session actors report their commands'
    storage failures (one per process: the manager's, in its AppendHealth)."""

    __slots__ = ("_counts", "_failed_at", "_last_error", "_logged_at", "every", "quiet")

    def __init__(self, every: float = SUMMARY_EVERY) -> None:
        self.every = every
        self.quiet = QUIET
        self._failed_at: float | None = None  # the outage's last failure (monotonic)
        self._logged_at = 0.0  # the outage's last line
        # Since that line, not yet told: failures by command, the last one's error.
        self._counts: dict[str, int] = {}
        self._last_error = ""

    def failed(self, command: str, error: str) -> None:
        """The store failed under ``command`` (its class's name) with ``error``."""
        now = time.monotonic()
        if self._failed_at is not None and now - self._failed_at >= self.quiet:
            self.flush()  # the last outage ended: what it left untold first
            self._failed_at = None
        if self._failed_at is None:
            self._failed_at = self._logged_at = now
            log.warning(
                "storage failed",
                command=command,
                error=error,
                later=f"counted, told at most every {self.every:g} s",
            )
            return
        self._failed_at = now
        self._counts[command] = self._counts.get(command, 0) + 1
        self._last_error = error
        if now - self._logged_at >= self.every:
            self.flush()

    def store_failed(self, command: str, exc: StorageError) -> None:
        """:meth:`failed`, ``exc`` marked as told: a hello it ends tells it no more."""
        exc.told = True
        self.failed(command, str(exc))

    def flush(self) -> None:
        """Tells what no line told yet, if anything."""
        if not self._counts:
            return
        now = time.monotonic()
        process_wide(
            "warning",
            "storage failing",
            failed=sum(self._counts.values()),
            commands=dict(self._counts),
            seconds=round(now - self._logged_at, 1),
            last_error=self._last_error,
        )
        self._logged_at = now
        self._counts.clear()
        self._last_error = ""
