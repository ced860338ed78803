"""OutageLog: what the log says of a store's calls of some kinds while the store fails:
the first failure of each kind is logged, the others only counted, until a call of
that kind works again, which is said once, with how many failed meanwhile; or, should
the process stop first, at its stop (:meth:`OutageLog.at_stop`), once.

A store that fails (Redis away, or refusing writes; a full disk) fails every call of a
kind that repeats: each presence heartbeat, each attach's join, each parked session's
look. A line per call would flood the log just when an operator reads it (three or
four lines a second per instance for presence, bench/redis_disk_full.py; a line per
parked session per look, 10,000 sessions a look each), so an outage of each kind is
two lines: when it began, and when it ended with its count (or, still on as the
process stops, a line then with the count so far: else the log of a stopped instance
told an outage's start and never how long it went on). Presence (server/presence.py),
the parked sessions' looks (server/status.py, one log per process, the manager's) and
the owed states (server/owed_states.py) tell theirs so.
"""

from __future__ import annotations

from typing import Any


class OutageLog:
    """The kinds of call failing now, each with its failures since its first (module
    docstring). ``subject`` names the calls in the line that ends an outage:
    ``"{subject} {kind} works again"``."""

    __slots__ = ("_failing", "_log", "failures", "subject")

    def __init__(self, subject: str, log: Any) -> None:
        self.subject = subject
        self._log = log  # a structlog logger: the component's own
        self.failures = 0  # failures so far, of every kind
        # Kinds failing now, each with its failures since its first, which alone was logged.
        self._failing: dict[str, int] = {}

    def failed(self, kind: str, event: str, error: str) -> None:
        """A call of ``kind`` failed with ``error``: logged as ``event`` if none of its
        kind was failing, else counted."""
        self.failures += 1
        failed = self._failing.get(kind)
        if failed is not None:
            self._failing[kind] = failed + 1
            return
        self._failing[kind] = 1
        self._log.warning(event, error=error, further=f"not logged until a {kind} works again")

    def worked(self, kind: str) -> None:
        """A call of ``kind`` worked: if its kind was failing, that is said, once, with
        how many of its calls failed."""
        if self._failing:
            failed = self._failing.pop(kind, None)
            if failed is not None:
                self._log.info(f"{self.subject} {kind} works again", failed=failed)

    def at_stop(self) -> None:
        """The process stops: each kind still failing is said, with how many of its
        calls failed, once (its count is forgotten: a second stop says nothing)."""
        failing, self._failing = self._failing, {}
        for kind, failed in failing.items():
            self._log.warning(f"{self.subject} {kind} still failing at stop", failed=failed)

    def failing(self, kind: str) -> int:
        """Calls of ``kind`` failed since the first of the outage under way (0: none)."""
        return self._failing.get(kind, 0)
