"""SessionManagerConfig: how the manager keeps sessions live (the seed's builder API)."""

from __future__ import annotations

import dataclasses
from typing import Final

MIB: Final = 1024 * 1024
# Pages read from the store at once, by default (server/pages.py PageReads): each is
# decoded in memory outside the memory budget, several times its bytes.
DEFAULT_READ_SLOTS: Final = 8
# Sessions a graceful stop parks at most, by default (server/restart_park.py): on JSONL
# each is a checkpoint its close writes (100,000 took a stop 0.85 -> 43 s, SQLite's park
# 12 s: bench/RESULTS.md), and a stop must end well within a supervisor's wait (docker
# stop's 10 s). Five of the park's batches.
DEFAULT_MAX_PARKED_AT_STOP: Final = 5000


@dataclasses.dataclass(frozen=True, slots=True)
class SessionManagerConfig:
    """How the manager keeps sessions. Times are in seconds.

    ``idle_timeout``: a connected session with no traffic this long becomes ``idle``.
    ``disconnect_retention``: how long a session with no connection stays in memory.
    ``max_sessions``: live actors at most (parked ones are evicted first).
    ``send_queue_frames`` / ``send_queue_bytes``: what may be queued per connection
    before it is closed (4429).
    ``ring_size`` / ``ring_bytes``: recent events kept per live session, to replay
    without the store.
    ``inbox_limit`` / ``inbox_bytes``: requests queued per session before its peers'
    readers (and in-process appends) wait.
    ``memory_budget``: bytes all of those together may hold in the process; see
    server/budget.py.
    A byte bound of 0 (``send_queue_bytes``, ``ring_bytes``, ``inbox_bytes``,
    ``memory_budget``) means no limit; counts of at least 1 (``ring_size``: 0 keeps
    no ring), times above 0, else ValueError.
    ``max_title_length`` / ``max_user_id_length`` (characters) and ``max_extra_bytes``
    (encoded): what a new session may carry (its metadata stays in memory); and with
    ``max_frame_bytes`` (0: none) no title and user id whose ``welcome`` would be over it.
    ``store_read_timeout``: how long a read from the store that a peer waits for (a
    page, a replay's page, a session's load, an attach's welcome, the wait for an old
    actor of the session to finish included) may take before it is abandoned
    (``StoreTimeout``; server/pages.py).
    ``read_slots``: pages read from the store at once, at least 2 (the pages of whole
    histories take at most half of them; server/pages.py).
    ``max_session_connections``: connections attached to one session at once on this
    process (0: no cap); one more is refused (``TooManySessionConnections``).
    ``max_parked_at_stop``: sessions a graceful stop of ``serve`` parks at most (0:
    none); the rest are the next start's (server/restart_park.py).
    """

    idle_timeout: float = 300
    disconnect_retention: float = 3600
    max_sessions: int = 1000
    send_queue_frames: int = 1024
    send_queue_bytes: int = 8 * MIB
    ring_size: int = 1024
    ring_bytes: int = 1 * MIB
    inbox_limit: int = 4096
    inbox_bytes: int = 8 * MIB
    memory_budget: int = 256 * MIB
    max_title_length: int = 1024
    max_user_id_length: int = 256
    max_extra_bytes: int = 64 * 1024
    max_frame_bytes: int = 0
    store_read_timeout: float = 5.0
    read_slots: int = DEFAULT_READ_SLOTS
    # Each attach and leave sends presence to every other connection of the session:
    # filling it costs N²/2 frames, some 0.5 s of the loop at 256, 8 s at 1,000.
    max_session_connections: int = 256
    max_parked_at_stop: int = DEFAULT_MAX_PARKED_AT_STOP

    def __post_init__(self) -> None:
        for name in ("max_sessions", "send_queue_frames", "inbox_limit"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "send_queue_bytes",
            "ring_size",
            "ring_bytes",
            "inbox_bytes",
            "max_session_connections",
            "max_parked_at_stop",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative (0: no limit)")
        if self.memory_budget < 0:
            raise ValueError("memory_budget must not be negative (0: no limit)")
        if self.read_slots < 2:
            # Whole histories take at most half: with one slot, they could take it all.
            raise ValueError("read_slots must be at least 2")
        for name in ("idle_timeout", "disconnect_retention", "store_read_timeout"):
            if not getattr(self, name) > 0:  # NaN too
                raise ValueError(f"{name} must be a number of seconds above 0")

    def with_idle_timeout(self, seconds: float) -> SessionManagerConfig:
        return dataclasses.replace(self, idle_timeout=seconds)

    def with_disconnect_retention(self, seconds: float) -> SessionManagerConfig:
        return dataclasses.replace(self, disconnect_retention=seconds)

    def with_max_sessions(self, count: int) -> SessionManagerConfig:
        return dataclasses.replace(self, max_sessions=count)

    def with_send_queue_frames(self, count: int) -> SessionManagerConfig:
        return dataclasses.replace(self, send_queue_frames=count)
