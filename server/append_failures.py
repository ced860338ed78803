"""AppendFailures: what the log says of store appends that fail, once per outage and then
in counts.

A store that fails (disk full, Redis down) fails the appends of every session that
streams, thousands a second: a line for each would flood the log, and cost CPU, just
when the server is in trouble. So the first failure of an outage is logged at once,
with its error; later ones are counted, and summarised at most once per
``SUMMARY_EVERY`` seconds (how many store appends failed, their events, over how many
sessions, the last error), when one more fails; except the first failure of the
store's in an outage that began with one session's own (its log at the file size limit,
then the disk fills: ``/readyz`` turns 503 at that instant), logged at once too, not
left for the next summary. The outage ends with a line of its own
(how long it lasted, how many failed, how many of those no summary told yet) at the
first append that succeeds of the session whose failure began it once none has failed
for ``SETTLE`` seconds, or of any session once none has failed for ``QUIET`` seconds.
Not at once at a success: a store that flaps (Redis at its ``maxmemory``, taking some
appends and refusing others as its memory hovers at the bound) fails again within a
moment, and each turn told as an end and a new outage, at error, made two lines per
flap, as many as the appends. Nor at once at another session's append, so that one
session whose appends keep failing among thousands that succeed (its log at the file
size limit) makes one outage, not one per batch. What no line told yet
when the manager closes is told then (``flush``): an outage under way at a stop is not
lost from the log.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Final

import structlog

from bamboo_session.persistence.failure_log import SETTLE

log = structlog.get_logger("bamboo_session.actor")

SUMMARY_EVERY: Final = 10.0  # seconds at least between two lines of one outage
# Seconds without a failed append after which any append that succeeds ends an outage:
# failures that came in a steady stream have stopped, whatever session they were for.
# Longer than a client takes to try again: one session whose append fails at each of
# its retries (every few seconds) among good ones stays one outage, summarised as one.
QUIET: Final = SUMMARY_EVERY
# Distinct sessions a summary counts at most: the ids it keeps meanwhile (128 bytes
# each at most) stay bounded however many sessions the outage fails.
SESSIONS_COUNTED: Final = 1000


class AppendFailures:
    """The outage under way, if any, as the session actors report their appends (one
    per process: the manager's, in its AppendHealth)."""

    __slots__ = (
        "_began",
        "_events",
        "_failed",
        "_failed_at",
        "_last_error",
        "_logged_at",
        "_outage_failed",
        "_sessions",
        "_source",
        "_store_told",
        "every",
        "quiet",
        "sessions_counted",
        "settle",
    )

    def __init__(self, every: float = SUMMARY_EVERY) -> None:
        self.every = every
        self.quiet = QUIET
        self.settle = SETTLE  # the same rule as the stores' own logs (failure_log.py)
        self.sessions_counted = SESSIONS_COUNTED
        self._began: float | None = None  # the outage's first failure (monotonic clock)
        self._source = ""  # the session of that failure
        self._store_told = False  # a failure of the store's was logged in this outage
        self._failed_at = 0.0  # the outage's last failure
        self._outage_failed = 0  # store appends failed since then
        self._logged_at = 0.0  # the outage's last line
        # Since that line, not yet told: failed store appends, their events, the
        # first ``sessions_counted`` sessions they were for, the last one's error.
        self._failed = 0
        self._events = 0
        self._sessions: set[str] = set()
        self._last_error = ""

    @property
    def failing(self) -> bool:
        """An outage is under way: appends failed, and it has not ended since."""
        return self._began is not None

    def failed(self, session_id: str, error: str, events: int, of_store: bool = True) -> None:
        """A store append of ``events`` events for ``session_id`` failed with ``error``;
        ``of_store``: not that session's alone (``/readyz`` takes it as the store's)."""
        now = self._failed_at = time.monotonic()
        self._outage_failed += 1
        if self._began is None or (of_store and not self._store_told):
            if self._began is None:
                self._began = self._logged_at = now
                self._source = session_id
            self._store_told = of_store
            log.error("append failed", error=error, count=events)
            return
        self._failed += 1
        self._events += events
        if len(self._sessions) < self.sessions_counted:
            self._sessions.add(session_id)
        self._last_error = error
        if now - self._logged_at >= self.every:
            self._summarise(now)

    def flush(self) -> None:
        """Tells what no line told yet, if anything (the manager closes)."""
        if self._failed:
            self._summarise(time.monotonic())

    def _summarise(self, now: float) -> None:
        process_wide(
            "error",
            "appends failing",
            failed=self._failed,
            events=self._events,
            sessions=len(self._sessions),
            seconds=round(now - self._logged_at, 1),
            last_error=self._last_error,
        )
        self._logged_at = now
        self._forget_told()

    def succeeded(self, session_id: str) -> None:
        """A store append for ``session_id`` succeeded: the outage, if any, is over if
        no append failed for ``settle`` seconds and that session's failure began it, or
        for ``quiet`` seconds."""
        if self._began is None:
            return
        now = time.monotonic()
        quiet_for = now - self._failed_at
        if session_id == self._source and quiet_for >= self.settle:
            ended_by = f"an append of session {session_id!r}, whose failure began it"
        elif quiet_for >= self.quiet:
            ended_by = f"{self.quiet:g} s without a failure"
        else:
            return  # the failures may well go on (a flapping store): not over yet
        process_wide(
            "info",
            "appends succeed again",
            failed=self._outage_failed,
            not_summarised=self._failed,
            seconds=round(now - self._began, 1),
            ended_by=ended_by,
        )
        self._began = None
        self._store_told = False
        self._outage_failed = 0
        self._forget_told()

    def _forget_told(self) -> None:
        self._failed = 0
        self._events = 0
        self._sessions.clear()
        self._last_error = ""


def process_wide(level: str, event: str, **fields: Any) -> None:
    """``event`` logged without the ``session_id`` bound in the task of the actor whose
    append tripped it: the line tells of the process's appends, not of that session."""
    contextvars.copy_context().run(_unbound, level, event, fields)


def _unbound(level: str, event: str, fields: dict[str, Any]) -> None:
    structlog.contextvars.unbind_contextvars("session_id")
    getattr(log, level)(event, **fields)
