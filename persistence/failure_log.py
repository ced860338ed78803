"""FailureLog: what a store's own log says of writes that fail, once per outage.

A store that fails (disk full, I/O error) fails every write that comes, thousands a
second: a line for each would flood the log just when the server is in trouble. So
the first failure of an outage is logged at once, as an error with the OS's words;
the later ones at debug level only, and counted. The outage ends, with a line that
says how many more failed and the last one's error, at the first write that succeeds
from the source whose failure began it (a session's log, the database file) once none
has failed for ``SETTLE`` seconds, or from any source once none has failed for
``QUIET`` seconds. Not at once at a success: a store that flaps (a disk all but full,
taking some writes and refusing others as space comes and goes) fails again within a
moment, and each turn told as an outage that ended and one that began would flood the
log as the failures would have. Nor at once at the success of another source's write:
one file that keeps failing among good ones (a session's log at the file size limit,
a file the store may not write) is told once, not at every batch. A failure of
another kind (another OS error: the disk full, while one file fails for a reason of
its own) is told as an error too, once per outage, so that it is not hidden at debug
level behind the failure that began it. (The server counts failed
appends in its own lines too: this is the store's side, which knows the file and the
OS error.)
"""

from __future__ import annotations

import logging
import time
from typing import Final

# Seconds without a failed write after which the success of any write ends an outage:
# failures that came in a steady stream have stopped, whatever their source. Longer than
# a client takes to try again: one session's log that fails at each of its retries
# (every few seconds) among good ones stays one outage, not an error at each retry.
QUIET: Final = 10.0
# Seconds without a failed write after which a success of the source whose failure
# began the outage ends it: a store that takes writes and refuses others by turns
# (flapping at a bound) fails again well within them, and stays one outage.
SETTLE: Final = 5.0
# Kinds of failure told as errors in one outage, the first's included (errno values:
# a handful at most, unless the file system is in trouble beyond what more lines say).
KINDS_TOLD: Final = 8


class FailureLog:
    """The outage under way in one store's writes, if any (owned by its writer)."""

    __slots__ = (
        "_failed_at",
        "_kinds",
        "_last_error",
        "_log",
        "_more",
        "_source",
        "_writes",
        "_writes_of",
        "quiet",
        "settle",
    )

    def __init__(self, log: logging.Logger, writes: str, writes_of: str | None = None) -> None:
        self._log = log
        self._writes = writes  # what fails, for the lines: "appends to the logs"
        # The same, of one source: "appends to the log of session {!r}" (None: the
        # store writes to one source only, ``writes``).
        self._writes_of = writes_of
        self.quiet = QUIET
        self.settle = SETTLE
        self._source: str | None = None  # whose failure began the outage under way
        self._failed_at = 0.0  # the last failure (monotonic clock)
        self._more = 0  # failures after the outage's first
        self._kinds: set[object] = set()  # those told as errors in the outage under way
        self._last_error = ""

    def failed(self, source: str, error: str, kind: object = None) -> None:
        """A write to ``source`` failed with ``error`` (what it was, and the OS's words);
        ``kind``: what sort of failure it was (the errno), as a key."""
        self._failed_at = time.monotonic()
        if self._source is None:
            self._source = source
            self._kinds.add(kind)
            self._log.error(
                "%s (later failures are logged at debug level, until it succeeds again"
                " after none failed for %g s)",
                error,
                self.settle,
            )
            return
        self._more += 1
        self._last_error = error
        if kind in self._kinds or len(self._kinds) >= KINDS_TOLD:
            self._log.debug("%s", error)
            return
        self._kinds.add(kind)
        self._log.error("%s (a failure of another kind, in an outage under way)", error)

    def succeeded(self, source: str) -> None:
        """A write to ``source`` succeeded: the outage, if any, is over if no write
        failed for ``settle`` seconds and that source began it, or for ``quiet``."""
        if self._source is None:
            return
        quiet_for = time.monotonic() - self._failed_at
        if source == self._source and quiet_for >= self.settle:
            writes = self._writes if self._writes_of is None else self._writes_of.format(source)
            ended = f"{writes} succeed again"
        elif quiet_for >= self.quiet:
            ended = f"{self._writes} succeed again, none failed for {self.quiet:g} s"
        else:
            return  # the failures may well go on (a flapping store): not over yet
        if self._more:
            self._log.warning(
                "%s; %d more failed since the first failure logged (the last: %s)",
                ended,
                self._more,
                self._last_error,
            )
        else:
            self._log.warning("%s", ended)
        self._source = None
        self._kinds.clear()
        self._more = 0
        self._last_error = ""
