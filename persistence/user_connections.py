"""Connections per user across instances: an optional protocol for a store that
several server instances share, so that ``--max-connections-per-user`` caps a user's
connections wherever they attach. A store that one process owns (memory, jsonl,
sqlite) needs none of it: the server counts its own connections, as it always has.

A connection is registered under its user with a heartbeat deadline, and counts until
it is released or its deadline passes: its instance refreshes the deadlines of all its
connections every ``heartbeat / 3`` seconds, so those of an instance that died stop
counting one heartbeat after its last refresh. A member is named by the instance and
the connection, so that two instances never take each other's connections for theirs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class UserConnectionStore(Protocol):
    """Each user's connections on every instance (module docstring)."""

    @property
    def heartbeat(self) -> float:
        """Seconds a connection counts after its last registration or refresh."""
        ...

    async def acquire(self, user: str, connection_id: str, limit: int) -> bool:
        """Register the connection under ``user`` unless the user already has
        ``limit`` connections that count (``limit`` 0 or less: no cap); whether it
        was registered. Dead instances' connections are not counted."""
        ...

    async def release(self, user: str, connection_ids: Sequence[str]) -> None:
        """Unregister connections of this instance (unknown ones are ignored)."""
        ...

    async def refresh(self, held: Mapping[str, Sequence[str]]) -> None:
        """Heartbeat: every connection this instance holds, by user, in one round trip;
        registered again if one went missing (an outage of the store longer than
        the heartbeat): it is still connected, so it counts."""
        ...
