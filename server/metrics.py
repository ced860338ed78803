"""Prometheus metrics of one server: counters bumped on the hot path, histograms of
latencies and batch sizes, gauges read at scrape time, and the process's own figures
(``process_*``), all in a registry of their own so several servers can share a process.

Histograms on the hot path, the counter bumped once per append and counts another
object keeps are server/metric_kinds.py's collectors, not prometheus_client's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    generate_latest,
)

from .metric_kinds import CounterOf, Histogram, HotCounter
from .sent_events import PATHS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds, from a fraction of a millisecond (an ack in memory) to seconds (a stalled
# disk): the range in which appends and deliveries are worth telling apart.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "bamboo_connections", "WebSocket connections attached to a session", registry=r
        )
        self.connections_total = Counter(
            "bamboo_connections_opened", "WebSocket connections accepted", registry=r
        )
        self.connections_over_limit = Counter(
            "bamboo_connections_over_limit",
            "TCP connections closed as soon as accepted: the process had --max-connections "
            "open already",
            registry=r,
        )
        self.requests_dropped = Counter(
            "bamboo_http_requests_dropped",
            "Requests (heads and early frames) dropped unanswered to make room in the share "
            "of --memory-budget for requests not answered yet: held there the longest",
            registry=r,
        )
        self.requests_timed_out = Counter(
            "bamboo_http_requests_timed_out",
            "Requests answered 408: their head, begun, was not whole within 10 s of the connection",
            registry=r,
        )
        self.live_actors = Gauge("bamboo_live_actors", "Session actors in memory", registry=r)
        self.parked_actors = Gauge(
            "bamboo_parked_actors", "Session actors kept with no connection", registry=r
        )
        self.sessions_stored = Gauge(
            "bamboo_sessions_stored",
            "Sessions in the store (read at most every few seconds)",
            registry=r,
        )
        self.stored_cap_refusals = Counter(
            "bamboo_stored_cap_refusals",
            "Hellos refused as their creation would pass a cap on stored sessions, closed "
            "and expired ones counted: cap=max_stored_sessions (close 1013, the store is "
            "full) or max_stored_sessions_per_user (close 4403)",
            ["cap"],
            registry=r,
        )
        self.build_info = Gauge(
            "bamboo_build_info",
            "1, labelled with this server's version, the commit it was built from "
            "(unknown: not built from a git checkout) and its store's format "
            "(docs/upgrading.md)",
            ["version", "commit", "store_format"],
            registry=r,
        )
        self.store_bytes = Gauge(
            "bamboo_store_bytes",
            "Bytes the store takes on disk (file stores; read at most every 30 s)",
            registry=r,
        )
        self.store_sync_failed = Gauge(
            "bamboo_store_sync_failed",
            "1 once a sync of the store's files failed in this process (JSONL, fsync "
            "mode): later syncs prove nothing, its WAL is kept whole and grows; restart",
            registry=r,
        )
        self.store_may_lose_writes = Gauge(
            "bamboo_store_may_lose_writes",
            "1 while the store's server may lose writes it acknowledged, as last checked "
            "(Redis: appendonly, appendfsync, no-appendfsync-on-rewrite, every heartbeat/3 "
            "s; or CONFIG refused): its next restart changes every session's epoch",
            registry=r,
        )
        self.pubsub_reconnects = CounterOf(
            "bamboo_redis_pubsub_reconnects",
            "Times the Redis store's pub/sub connection was made again after it was lost "
            "(not ready meanwhile; 0 for other stores)",
        )
        self.pubsub_unreadable = CounterOf(
            "bamboo_redis_pubsub_unreadable",
            "Messages on sessions' pub/sub channels the Redis store dropped as unreadable, "
            "each session caught up from the store instead (0 for other stores)",
        )
        r.register(self.pubsub_reconnects)
        r.register(self.pubsub_unreadable)
        self.buffered_bytes = Gauge(
            "bamboo_buffered_bytes",
            "Bytes held in replay rings, send queues and inboxes (see --memory-budget)",
            registry=r,
        )
        self.events_appended = HotCounter(
            "bamboo_events_appended", "Events appended to session logs"
        )
        r.register(self.events_appended)
        self.events_failed = Counter(
            "bamboo_events_failed",
            "Events whose store append failed (disk full, I/O error, store unreachable): "
            "nothing of them stored, each answered with an error",
            registry=r,
        )
        self.appends_over_session_cap = Counter(
            "bamboo_appends_over_session_cap",
            "Appends refused (too_large, nothing stored) as they would take their session "
            "past --max-session-bytes",
            registry=r,
        )
        self.appends_over_user_cap = Counter(
            "bamboo_appends_over_user_cap",
            "Appends refused (too_large, nothing stored) as they would take the sessions "
            "of their session's user past --max-user-bytes",
            registry=r,
        )
        self.events_repeated = Counter(
            "bamboo_events_repeated",
            "Events a session's feed handed out again, at or below the seq already sent to "
            "its connections: not sent again (0 unless the feed is at fault)",
            registry=r,
        )
        self.events_not_resent = Counter(
            "bamboo_events_not_resent",
            "Event frames not sent to a connection because one at or above their seq was "
            "sent to it already, by the path they came by (0 unless the server is at fault)",
            ["path"],
            registry=r,
        )
        self.event_gaps = Counter(
            "bamboo_event_gaps",
            "Event frames not sent to a connection (closed 1011 to resume) because events "
            "before them were missing from its stream, by path (0 unless the server is at fault)",
            ["path"],
            registry=r,
        )
        for path in PATHS:  # each at 0 from the start: scraped, and read by the soaks
            self.events_not_resent.labels(path=path)
            self.event_gaps.labels(path=path)
        self.events_replayed = Counter(
            "bamboo_events_replayed", "Events replayed to resuming connections", registry=r
        )
        self.replay_store_reads = Counter(
            "bamboo_replay_store_reads",
            "Pages of events read from the store for resuming connections (one read "
            "serves every resumer waiting for that page)",
            registry=r,
        )
        self.send_queue_drops = Counter(
            "bamboo_send_queue_drops",
            "Connections closed with 4429 as too slow to read: their send queue was full, "
            "or they did not take a page of their replay in time",
            registry=r,
        )
        self.read_wait_seconds = Counter(
            "bamboo_read_wait_seconds",
            "Seconds connections' reads were held back by the byte rate (--rate-limit-bytes): "
            "the time actually waited, counted when a wait ends",
            registry=r,
        )
        self.replay_share_wait_seconds = Counter(
            "bamboo_replay_share_wait_seconds",
            "Seconds resumes' replay pages waited for their peer's other replay pages to "
            "be taken (--replay-peer-share), or all peers' (--replay-total-share), "
            "counted when a wait ends",
            registry=r,
        )
        self.replay_wait_seconds = Counter(
            "bamboo_replay_wait_seconds",
            "Seconds resumes' replays waited for their peer's read allowance (the byte "
            "rate's figures, shared by a peer's connections), counted when a wait ends",
            registry=r,
        )
        self.page_wait_seconds = Counter(
            "bamboo_page_wait_seconds",
            "Seconds history and events requests, and the pages of whole histories "
            "streamed over HTTP, waited for their peer's read allowance, counted when a "
            "wait ends",
            registry=r,
        )
        self.http_rate_limited = Counter(
            "bamboo_http_rate_limited",
            "HTTP API requests answered 429: their peer's read allowance was in debt",
            registry=r,
        )
        self.answers_refused = Counter(
            "bamboo_answers_refused",
            "HTTP answers refused because answers not yet read by their peers hold all "
            "they may: their own peer's (full=peer, 429) or all peers' (full=server, 503)",
            ["full"],
            registry=r,
        )
        self.answers_dropped = Counter(
            "bamboo_answers_dropped",
            "HTTP answers dropped unread (their connection closed) to make room for the "
            "answer of a peer holding less than an equal part of the unread answers (only "
            "answers taken behind pace)",
            registry=r,
        )
        self.errors = Counter("bamboo_errors", "Error frames sent, by code", ["code"], registry=r)
        self.closes = Counter(
            "bamboo_closes",
            "Connections closed by the server, by close code (handshake refusals included)",
            ["code"],
            registry=r,
        )
        self.append_ack_seconds = self._histogram(
            "bamboo_append_ack_seconds",
            "From reading an append to queueing its ack (stored as durably as configured)",
            LATENCY_BUCKETS,
        )
        self.group_commit_events = self._histogram(
            "bamboo_group_commit_events",
            "Events per store append: a session's queued appends go to the store together",
            BATCH_BUCKETS,
        )
        self.batch_items = self._histogram(
            "bamboo_batch_items",
            "Items per batch frame accepted (the batch publish extension)",
            BATCH_BUCKETS,
        )
        self.group_commit_seconds = self._histogram(
            "bamboo_group_commit_seconds",
            "Time the store takes for one such append (its write and sync)",
            LATENCY_BUCKETS,
        )
        self.delivery_lag_seconds = self._histogram(
            "bamboo_delivery_lag_seconds",
            "From the store's acknowledgement (ts) of the oldest event of each fan-out "
            "batch to its fan-out to viewers",
            LATENCY_BUCKETS,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, _resident_memory_bytes…

    def _histogram(self, name: str, documentation: str, buckets: Sequence[float]) -> Histogram:
        histogram = Histogram(name, documentation, buckets)
        self.registry.register(histogram)
        return histogram

    def watch_actors(
        self, live: Callable[[], int], parked: Callable[[], int], buffered: Callable[[], int]
    ) -> None:
        self.live_actors.set_function(live)
        self.parked_actors.set_function(parked)
        self.buffered_bytes.set_function(buffered)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def figures(self) -> dict[str, float]:
        """The console's figures (``GET /api/v1/stats``): the metrics above, unlabelled,
        as numbers by name, plus the server's clock for rates between two reads."""
        figures: dict[str, float] = {"time": time.time()}
        for name, metric in _FIGURES.items():
            for family in getattr(self, metric).collect():
                for sample in family.samples:
                    if sample.name in (family.name, family.name + "_total"):
                        figures[name] = int(sample.value)
        return figures


_FIGURES = {
    "connections": "connections",
    "connections_opened": "connections_total",
    "sessions_live": "live_actors",
    "sessions_parked": "parked_actors",
    "events_appended": "events_appended",
    "events_replayed": "events_replayed",
    "store_sync_failed": "store_sync_failed",
    "store_may_lose_writes": "store_may_lose_writes",
}
