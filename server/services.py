"""Services: what a connection and the HTTP handlers use of the running server, handed
to them instead of the server itself."""

from __future__ import annotations

import dataclasses

from .auth import AccessPolicy
from .config import ServerConfig
from .flush import Flusher
from .limits import ConnectionCounter
from .manager import SessionManager
from .metrics import Metrics
from .pages import PageReads
from .quotas import SessionQuotas
from .readiness import Readiness
from .replay_allowance import ReplayAllowances
from .store_stats import StoreStats


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    config: ServerConfig
    manager: SessionManager
    metrics: Metrics
    access: AccessPolicy
    user_connections: ConnectionCounter
    readiness: Readiness
    store_stats: StoreStats
    quotas: SessionQuotas
    flusher: Flusher  # writes frames to idle connections' sockets, once per loop turn
    # Pages (history, events, replays) read from the store at once, each within
    # --store-read-timeout (server/pages.py): the manager's.
    page_reads: PageReads
    # What resumes' replays may cost each peer, across its connections (the byte rate's
    # figures, a page at a sixteenth of its size: server/replay_allowance.py).
    replay_allowances: ReplayAllowances
