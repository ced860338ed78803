"""What the pub/sub listener (listener.py) tells an operator of its failures, and its
count of the messages it dropped as unreadable: which kinds of failure it has logged
in full, and when it last told of unreadable messages.

- A lost connection is routine (a reset, a restart of Redis): a warning with no
  traceback, when it is news (the first of an outage, not each retry's), naming
  Redis's address where the error does not (redis-py's "Connection closed by
  server." does not). It is a failure of Redis or of the connection (``LOST``), or
  any error raised through redis-py's connection layer, which drops its connection
  on any error (pool.py ``from_redis_py``: a transport torn down under a write).
- Any other failure is a bug, ours or redis-py's (a push it cannot read): an error with
  its traceback the first time of its kind; later ones of that kind as the lost
  connections are.
- A message on a session's channel that could not be handled is counted; the first of
  its kind is logged as an error with its traceback, later ones as a count, at most
  once per ``UNREADABLE_TOLD_EVERY``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import redis.exceptions

from ..base import StorageError
from .pool import described, from_redis_py

UNREADABLE_TOLD_EVERY: Final = 60.0  # seconds between warnings of unreadable messages
# What a lost connection raises, besides what redis-py's connection layer raises.
LOST: Final = (redis.exceptions.RedisError, OSError, StorageError)


class ListenerLog:
    """Logs the listener's failures to its logger (see module docstring)."""

    def __init__(self, log: logging.Logger, where: str = "") -> None:
        self._log = log
        self._where = where  # Redis's address, told with a lost connection
        self._failed_so: set[type[Exception]] = set()  # kinds of failure logged in full
        self.unreadable = 0  # messages on session channels dropped as unreadable
        self._unreadable_told = (0.0, 0)  # when unreadable ones were last logged, how many

    def failure(self, what: str, exc: Exception, news: bool) -> None:
        """Logs a failure: a lost connection as a warning, if it is ``news``; any
        other with its traceback the first time of its kind, then as those are."""
        lost = isinstance(exc, LOST) or from_redis_py(exc)
        if not lost and type(exc) not in self._failed_so:
            self._failed_so.add(type(exc))
            self._log.error("%s: %s", what, described(exc), exc_info=exc)
        elif news:
            told = described(exc)
            if lost and self._where not in told:
                told = f"{told} (redis at {self._where})"
            self._log.warning("%s: %s", what, told)

    def unreadable_message(self, session_id: str, exc: Exception) -> None:
        """A message on the session's channel could not be handled: counted, logged."""
        self.unreadable += 1
        now = asyncio.get_running_loop().time()
        told_at, told = self._unreadable_told
        if type(exc) not in self._failed_so:
            self._failed_so.add(type(exc))
            what = "unreadable message on session %r's channel dropped: %s"
            self._log.error(what, session_id, described(exc), exc_info=exc)
            self._unreadable_told = (now, self.unreadable)
        elif now - told_at >= UNREADABLE_TOLD_EVERY:
            what = "%d more unreadable messages on session channels dropped (the last: %r, %s)"
            self._log.warning(what, self.unreadable - told, session_id, described(exc))
            self._unreadable_told = (now, self.unreadable)
