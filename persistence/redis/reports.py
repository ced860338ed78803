"""What RedisStorage says of itself beyond the storage contract, for the server's
optional questions (persistence/capabilities.py, persistence/pubsub_counts.py):
whether it is ready and why not, a probe of whether Redis takes writes, whether Redis
may lose acknowledged writes, its pub/sub connection's counts, the store's format, and
Redis's clock. Each is a pass-through to the part that knows; kept here, as a base
class of RedisStorage, so that storage.py holds the contract itself."""

from __future__ import annotations

from datetime import datetime

from .client import Commands
from .clock import RedisClock
from .durability import DurabilityWatch
from .live import Live
from .store_format import FORMAT


class StoreReports:
    """RedisStorage's answers to the server's optional questions (module docstring)."""

    _open: bool
    live: Live
    durability: DurabilityWatch
    redis: Commands
    clock: RedisClock
    # StoreFormat: the format as the open found it (or wrote it, where none was).
    store_format = f"redis/{FORMAT}"

    @property
    def ready(self) -> bool:
        return self._open and self.live.listener.connected

    @property
    def not_ready_reason(self) -> str | None:  # NotReadyReason: /readyz
        listener = self.live.listener
        if not self._open:
            return "storage is not open"
        if not listener.connected:  # Redis away, or this connection alone lost
            return f"no pub/sub connection to Redis at {listener.address}: {listener.lost_by}"
        return self.durability.evicting

    async def probe_writes(self) -> None:  # WriteProbe: /readyz while appends fail
        await self.redis.probe_writes()

    @property
    def may_lose_writes(self) -> bool:  # WriteLossRisk: bamboo_store_may_lose_writes
        return self.durability.may_lose_writes

    @property
    def pubsub_reconnects(self) -> int:  # PubSubCounts: bamboo_redis_pubsub_reconnects
        return self.live.listener.reconnects

    @property
    def pubsub_unreadable(self) -> int:  # PubSubCounts: bamboo_redis_pubsub_unreadable
        return self.live.listener.unreadable

    def now(self) -> datetime:
        """The store's clock: Redis's, as this process last read it (clock.py)."""
        return self.clock.now()

    def seconds_since(self, moment: datetime) -> float:
        """From a time Redis stamped: on Redis's clock as read here (no stamp is this
        process's to time by its monotonic clock)."""
        lag = (self.clock.now() - moment).total_seconds()
        return lag if lag > 0.0 else 0.0
