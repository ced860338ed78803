"""What a backend may offer beyond the storage contract (persistence/base.py), which the
server looks for with ``isinstance``: the health of its syncs, the risk that its server
loses acknowledged writes, the directories it writes in, whether it takes writes now,
why it is not ready, the format of what it stores, the park at a restart of what a
dead server left attached, what it still owes its disk (a stop that cannot end), and
whether its appends are this process's own work (no network round trip)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class SyncHealth(Protocol):
    """A store that can lose trust in its own syncs (the JSONL store in ``fsync``
    mode): after a failed ``fsync`` one that succeeds proves nothing (Linux reports a
    write-back error once), so it keeps what it needs for the next open, which only a
    restart brings (``/metrics``: ``bamboo_store_sync_failed``)."""

    @property
    def sync_failed(self) -> bool:
        """A sync failed in this process: restart it (the JSONL WAL grows until then)."""
        ...


@runtime_checkable
class WriteLossRisk(Protocol):
    """A store on a server that may, by its settings, lose writes it acknowledged (the
    Redis store: ``appendonly``, ``appendfsync``), which a restart of that server then
    shows as every session's epoch changing (``/metrics``:
    ``bamboo_store_may_lose_writes``)."""

    @property
    def may_lose_writes(self) -> bool:
        """As last seen, the server may lose writes it acknowledged, or cannot say."""
        ...


@runtime_checkable
class NotReadyReason(Protocol):
    """A store that can say why it cannot be promised on now, beyond "not open" (the
    Redis store: Redis away, its pub/sub connection lost; Redis evicting the store's
    keys): ``/readyz``'s reason, in an operator's words."""

    @property
    def not_ready_reason(self) -> str | None:
        """Why the store is not ready now (naming its server and the cause), or None."""
        ...


@runtime_checkable
class WriteLocations(Protocol):
    """A store in files (JSONL, SQLite): the directories its appends write in, which
    ``/readyz`` probes, each, while appends fail (server/readiness.py); none when
    read-only. A store without files (memory, Redis) does not implement it."""

    def write_locations(self) -> tuple[Path, ...]: ...


@runtime_checkable
class WriteProbe(Protocol):
    """A store that can tell whether it takes writes now, writing nothing (the Redis
    store: Redis refuses writes while it cannot persist, ``MISCONF``; at its
    ``maxmemory``, ``OOM``; the SQLite store: whether it gets the write lock, which
    another process may hold): while appends fail, ``/readyz`` trusts the store again
    only once it says so, no sooner than it would trust one that cannot tell, and for
    a store in files, once its directories take writes too (server/readiness.py)."""

    async def probe_writes(self) -> None:
        """Returns if the store would take a write now; StorageError if not."""
        ...


@runtime_checkable
class StoreFormat(Protocol):
    """A store that records its format (JSONL, SQLite, Redis: docs/upgrading.md): which
    one it holds, ``<kind>/<number>`` as its open found or wrote it (``jsonl/1``,
    ``sqlite/3``), for an operator to tell (the ``listening`` line,
    ``bamboo_build_info``). A store that keeps nothing (memory) has none."""

    @property
    def store_format(self) -> str: ...


@runtime_checkable
class ParksAttached(Protocol):
    """A store one process holds (memory, JSONL, SQLite): what a server that died left
    ``active`` or ``idle`` is parked at the next start (server/restart_park.py) by the
    store itself, a batch at a time, not a listing and a write per session (100,000
    sessions on JSONL: a listing of each batch sorted them all, a loop stall of a
    second and more). A store several processes share (Redis) parks a dead process's
    sessions by its presence sweep instead, and does not implement it."""

    def park_attached(self, since: datetime, batch: int) -> AsyncIterator[int]:
        """Moves to ``disconnected`` every session stored ``active`` or ``idle`` whose
        ``updated_at`` is at or before ``since``, a time of the store's clock
        (``Storage.now()``, which stamps every write after it later), unless it has
        expired by that clock (cleanup's): a state
        write, as ``update_session_state`` makes it (``updated_at`` moves, activity and
        expiry stay; a store that writes live states lazily writes these so too), each
        checked in the same step as its move, so that one written since (an attach)
        is left as that write left it. ``batch`` sessions at most per step, each step
        yielding how many it parked; the caller's turns go between steps. In an order
        of the store's choosing (persistence/parking.py says why none is promised)."""
        ...

    async def attached_left(self, since: datetime) -> bool:
        """Whether a session that :meth:`park_attached` ``(since, …)`` would move is
        still stored: what a park stopped at a bound (a graceful stop's) left for the
        next start. A read: it moves nothing."""
        ...


@runtime_checkable
class AppendsInProcess(Protocol):
    """A store one process holds whose appends are that process's own work, in memory
    or on its disk (memory, JSONL, SQLite): a session's actor may run a lone append in
    the task of the peer that sent it rather than wake its own (server/actor.py
    ``append_now``). A store whose appends are round trips to another server (Redis)
    does not implement it: its appends always go through the actor's task, so that
    the peer's reader does not wait for the network before it reads on."""

    appends_in_process: bool


@dataclass(frozen=True, slots=True)
class DiskDebt:
    """Appends a store has taken and not answered yet, because the disk has not said
    they are durable: ``waiting`` names the step the oldest waits on (the JSONL WAL's
    sync by its helper process, the writer's I/O thread), for ``seconds``."""

    appends: int = 0
    events: int = 0
    owed_bytes: int = 0
    waiting: str = ""
    seconds: float = 0.0

    def fields(self) -> dict[str, object]:
        """For a log line: what is owed, and what it waits on."""
        return {
            "appends_owed": self.appends,
            "events_owed": self.events,
            "bytes_owed": self.owed_bytes,
            "waiting_on": self.waiting or None,
            "waiting_seconds": round(self.seconds, 3),
        }


@runtime_checkable
class OwesTheDisk(Protocol):
    """A store whose appends wait on a disk (JSONL): what a stop that cannot end in its
    bound leaves unacknowledged, for the log to name (server/stop_bounds.py)."""

    def disk_debt(self) -> DiskDebt: ...
