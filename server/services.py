"""Services: what a connection and the HTTP handlers use of the running server, handed
to them instead of the server itself."""

from __future__ import annotations

import dataclasses

from .auth import AccessPolicy
from .config import ServerConfig
from .flush import Flusher
from .manager import SessionManager
from .metrics import Metrics
from .pages import PageReads
from .quotas import SessionQuotas
from .read_allowance import ReadAllowances
from .readiness import Readiness
from .replay_shares import ReplayShares
from .store_stats import StoreStats
from .stored_caps import StoredCaps
from .unread_answers import UnreadAnswers
from .user_connections import LocalUserConnections


@dataclasses.dataclass(frozen=True, slots=True)
class Services:
    config: ServerConfig
    manager: SessionManager
    metrics: Metrics
    access: AccessPolicy
    # --max-connections-per-user: this process's count, or the shared store's
    # (server/user_connections.py)
    user_connections: LocalUserConnections
    readiness: Readiness
    store_stats: StoreStats
    quotas: SessionQuotas
    # What the log and the metrics tell of the stored-session caps (hellos refused at
    # them, the count nearing --max-stored-sessions: server/stored_caps.py).
    stored_caps: StoredCaps
    flusher: Flusher  # writes frames to idle connections' sockets, once per loop turn
    # Pages (history, events, replays) read from the store at once, each within
    # --store-read-timeout (server/pages.py): the manager's.
    page_reads: PageReads
    # What the pages a peer draws may cost it (replays, history and events over WebSocket
    # and HTTP), across its connections and requests (the byte rate's figures, a page at
    # a sixteenth of its size: server/read_allowance.py).
    read_allowances: ReadAllowances
    # HTTP answers written and not yet taken by their peers, and each peer's share of
    # them (server/unread_answers.py): the server's, kept from its start.
    unread_answers: UnreadAnswers
    # The replay pages each peer's connections hold at once, against its share of the
    # memory budget (--replay-peer-share), and all peers' together against their total
    # (--replay-total-share; server/replay_shares.py).
    replay_shares: ReplayShares
