"""What an operator sees of the stored-session caps (``--max-stored-sessions``,
``--max-stored-sessions-per-user``) before and when they refuse creations.

Both count closed and expired sessions until they are deleted or cleaned up, so with
no ``--default-ttl`` a server that runs long enough refuses every creation; users see
it first, unless the log and the metrics say so:

- a warning, ``stored sessions near their cap``, when the count of stored sessions
  (the one ``bamboo_sessions_stored`` shows, read by server/store_stats.py at a
  scrape of ``/metrics``, and on its own at the start and whenever no count came for
  ``WATCH_EVERY``) reaches ``NEAR_FULL`` of ``--max-stored-sessions``: once per
  crossing, again only after it has been below;
- a warning, ``session creation refused at a stored-session cap``, when a ``hello``
  is refused at either cap: the first, then at most one a ``REFUSAL_LOG_EVERY`` per
  cap, carrying the count of refusals left unlogged since the last line (a flood of
  refused hellos is one line a minute, whatever its users: one record per cap, no
  table by user);
- ``bamboo_stored_cap_refusals{cap}``, each refusal counted.
"""

from __future__ import annotations

import time
from typing import Final

import structlog

from bamboo_session.persistence.base import StorageFull

from .config import ServerConfig
from .metrics import Metrics
from .quotas import TooManyStoredSessions

log = structlog.get_logger("bamboo_session.server")

NEAR_FULL: Final = 0.9  # of --max-stored-sessions: the count past which a warning goes
REFUSAL_LOG_EVERY: Final = 60.0  # seconds between two lines of one cap's refusals
STORE_CAP: Final = "max_stored_sessions"
USER_CAP: Final = "max_stored_sessions_per_user"
CAPS: Final = (STORE_CAP, USER_CAP)
_TTL_HINT: Final = (
    "closed sessions stay until deleted: set --default-ttl to let them expire and be cleaned up"
)


class RefusalLine:
    """When one cap's refusals are logged: the first, then one a ``REFUSAL_LOG_EVERY``."""

    def __init__(self) -> None:
        self._logged_at: float | None = None
        self._unlogged = 0  # refusals since the last line, not on one

    def take(self, now: float) -> int | None:
        """None when this refusal goes unlogged; else the count of those before it that
        did, since the last line (which this refusal's line carries)."""
        if self._logged_at is not None and now - self._logged_at < REFUSAL_LOG_EVERY:
            self._unlogged += 1
            return None
        self._logged_at = now
        suppressed, self._unlogged = self._unlogged, 0
        return suppressed


class StoredCaps:
    """The stored-session caps of one server process, as its log and metrics tell them."""

    def __init__(self, config: ServerConfig, metrics: Metrics) -> None:
        self.limits = {
            STORE_CAP: config.max_stored_sessions,
            USER_CAP: config.max_stored_sessions_per_user,
        }
        self.ttl_unset = config.default_ttl is None
        self._lines = {cap: RefusalLine() for cap in CAPS}
        self._refusals = metrics.stored_cap_refusals
        for cap in CAPS:  # each at 0 from the start, for rates and alerts
            self._refusals.labels(cap=cap)
        self._near_full = False

    def note_refusal(self, exc: BaseException) -> None:
        """Counts and (rate-limited) logs ``exc`` if it refused a ``hello`` at a cap."""
        if isinstance(exc, StorageFull):
            self._refused(STORE_CAP, {})
        elif isinstance(exc, TooManyStoredSessions):
            self._refused(USER_CAP, {"user": exc.owner})

    def _refused(self, cap: str, fields: dict[str, object]) -> None:
        self._refusals.labels(cap=cap).inc()
        suppressed = self._lines[cap].take(time.monotonic())
        if suppressed is None:
            return
        log.warning(
            "session creation refused at a stored-session cap",
            cap=cap,
            limit=self.limits[cap],
            suppressed=suppressed,
            hint=self._hint(cap),
            **fields,
        )

    def counted(self, stored: int) -> None:
        """The store's count of its sessions, as just read: a warning as it crosses
        ``NEAR_FULL`` of the cap, none again until it has been below."""
        limit = self.limits[STORE_CAP]
        near_full = limit > 0 and stored >= NEAR_FULL * limit
        if near_full and not self._near_full:
            log.warning(
                "stored sessions near their cap",
                cap=STORE_CAP,
                limit=limit,
                stored=stored,
                hint=self._hint(STORE_CAP),
            )
        self._near_full = near_full

    def _hint(self, cap: str) -> str:
        """What the operator may do: the TTL first when there is none."""
        remedy = (
            "delete sessions of that user, or raise --max-stored-sessions-per-user"
            if cap == USER_CAP
            else "delete sessions, or raise --max-stored-sessions"
        )
        return f"{_TTL_HINT}; or {remedy}" if self.ttl_unset else remedy
