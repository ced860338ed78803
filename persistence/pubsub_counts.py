"""Pub/sub counts: an optional protocol for a store whose live delivery comes over a
connection of its own to a server that several instances share (the Redis store's
pub/sub listener), so that ``/metrics`` shows how that connection fares. A store that
one process owns feeds its subscriptions in process, and has neither count.

- ``pubsub_reconnects``: times the connection was made again after it was lost (a
  restart of Redis, a network fault); the store is not ready while it is down.
- ``pubsub_unreadable``: messages on sessions' channels dropped as unreadable (no
  JSON, a notice the store cannot read: published by any client of that server, or
  by an instance of another version); each session was caught up from the store.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PubSubCounts(Protocol):
    """Counts of a store's pub/sub connection, since it opened (module docstring)."""

    @property
    def pubsub_reconnects(self) -> int: ...

    @property
    def pubsub_unreadable(self) -> int: ...
