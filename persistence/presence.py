"""Presence across instances: an optional protocol for a store that several server
instances share, so that ``presence`` frames and the ``connections`` count are
session-wide. A store that one process owns (memory, jsonl, sqlite) needs none of it:
the server counts its own connections, as it always has.

A connection is registered with a heartbeat deadline; its instance refreshes the
deadlines of all its connections every ``heartbeat / 3`` seconds (and registers again,
announced as joined, any that went missing meanwhile: an outage of the store longer
than the heartbeat). A connection whose deadline passed (its instance died) is removed
by the next join, leave, refresh or count of any instance on that session, and
announced as ``left`` then. Notices of joins and
leaves reach every instance subscribed to the session (it has a subscription to the
session's events), through the callback given to :meth:`PresenceStore.on_presence`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import msgspec


class PresenceNotice(msgspec.Struct, frozen=True):
    """A connection joined or left a session; ``connections`` is the session-wide
    count after it. ``instance`` names the instance that registered the change (the
    instance that found a dead connection, for a left by expiry), so an instance can
    skip the notices of its own changes, which it announced itself."""

    session_id: str
    connection_id: str
    role: str
    joined: bool
    connections: int
    instance: str
    expired: bool = False  # left because its heartbeat deadline passed


@runtime_checkable
class PresenceStore(Protocol):
    """Session-wide connection counts and join/leave notices (module docstring)."""

    @property
    def instance(self) -> str:
        """This instance's name in notices."""
        ...

    @property
    def heartbeat(self) -> float:
        """Seconds a connection counts after its last refresh."""
        ...

    async def join(self, session_id: str, connection_id: str, role: str) -> int:
        """Register a connection; the session-wide count after it."""
        ...

    async def leave(self, session_id: str, connection_id: str, role: str) -> int:
        """Unregister a connection; the session-wide count after it."""
        ...

    async def leave_all(self, session_id: str, connections: Sequence[tuple[str, str]]) -> int:
        """Unregister several ``(connection_id, role)`` at once; the count after."""
        ...

    async def refresh(self, connections: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        """Heartbeat: every ``(connection_id, role)`` this instance holds, by session,
        in one round trip."""
        ...

    async def count(self, session_id: str) -> int:
        """Connections to the session on every instance, dead ones not counted."""
        ...

    async def counts(self, session_ids: Sequence[str]) -> list[int]:
        """:meth:`count` of each session, in one round trip."""
        ...

    def on_presence(self, callback: Callable[[PresenceNotice], object] | None) -> None:
        """Call ``callback`` with every notice for the sessions this instance
        subscribes to (its own changes included; see ``instance``)."""
        ...
