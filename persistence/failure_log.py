"""FailureLog: what a store's own log says of writes that fail, once per outage.

A store that fails (disk full, I/O error) fails every write that comes, thousands a
second: a line for each would flood the log just when the server is in trouble. So
the first failure of an outage is logged at once, as an error with the OS's words;
the later ones at debug level only, and counted; the first write that succeeds after
them ends the outage with a line that says how many more failed, and the last one's
error. (The server counts failed appends in its own lines too: this is the store's
side, which knows the file and the OS error.)
"""

from __future__ import annotations

import logging


class FailureLog:
    """The outage under way in one store's writes, if any (owned by its writer)."""

    __slots__ = ("_failing", "_last_error", "_log", "_more", "_writes")

    def __init__(self, log: logging.Logger, writes: str) -> None:
        self._log = log
        self._writes = writes  # what fails, for the lines: "appends to the logs"
        self._failing = False
        self._more = 0  # failures after the outage's first
        self._last_error = ""

    def failed(self, error: str) -> None:
        """A write failed with ``error`` (what it was, and the OS's words)."""
        if not self._failing:
            self._failing = True
            self._log.error(
                "%s (until %s succeed again, later failures are logged at debug level)",
                error,
                self._writes,
            )
            return
        self._more += 1
        self._last_error = error
        self._log.debug("%s", error)

    def succeeded(self) -> None:
        """A write succeeded: the outage, if any, is over."""
        if not self._failing:
            return
        if self._more:
            self._log.warning(
                "%s succeed again; %d more failed since the first failure logged (the last: %s)",
                self._writes,
                self._more,
                self._last_error,
            )
        else:
            self._log.warning("%s succeed again", self._writes)
        self._failing = False
        self._more = 0
        self._last_error = ""
