"""Prometheus metrics of one server: counters bumped on the hot path, gauges read at
scrape time, all in a registry of their own so several servers can share a process."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
        self.live_actors = Gauge("bamboo_live_actors", "Session actors in memory", registry=r)
        self.parked_actors = Gauge(
            "bamboo_parked_actors", "Session actors kept with no connection", registry=r
        )
        self.events_appended = Counter(
            "bamboo_events_appended", "Events appended to session logs", registry=r
        )
        self.events_replayed = Counter(
            "bamboo_events_replayed", "Events replayed to resuming connections", registry=r
        )
        self.send_queue_drops = Counter(
            "bamboo_send_queue_drops",
            "Connections closed with 4429 because their send queue was full",
            registry=r,
        )
        self.errors = Counter("bamboo_errors", "Error frames sent, by code", ["code"], registry=r)
        self.closes = Counter(
            "bamboo_closes", "Connections closed by the server, by close code", ["code"], registry=r
        )

    def watch_actors(self, live: Callable[[], int], parked: Callable[[], int]) -> None:
        self.live_actors.set_function(live)
        self.parked_actors.set_function(parked)

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
}
