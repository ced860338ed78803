"""Presence across instances: an optional protocol for a store that several server
instances share, so that ``presence`` frames and the ``connections`` count are
session-wide. A store that one process owns (memory, jsonl, sqlite) needs none of it:
the server counts its own connections, as it always has.

A connection is registered with a heartbeat deadline; its instance refreshes the
deadlines of all its connections every ``heartbeat / 3`` seconds (and registers again,
announced as joined, any that went missing meanwhile: an outage of the store, or a
stall of the instance, longer than the heartbeat). A connection whose deadline passed
(its instance died) is removed by the next join, leave, refresh or count of any
instance on that session, and announced as ``left`` then; every instance also sweeps,
as often as it refreshes but on a task of its own (a big sweep takes seconds), the
instances whose heartbeat ran out (:meth:`PresenceStore.sweep_dead`),
so that a session whose connections were all on a dead one is ``disconnected`` even
when no surviving instance holds it. Notices of joins and
leaves reach every instance subscribed to the session (it has a subscription to the
session's events), through the callback given to :meth:`PresenceStore.on_presence`.

A connection is of one session, of one epoch: joins, leaves and refreshes given an
``epoch`` reach the session stored under the id only while it is of that epoch,
checked in the same step. An instance that has not heard yet that the session was
deleted, or replaced by a new one under its id (its notice late, or lost with its
pub/sub connection), so never registers its old connections in the new session, nor
has them counted there, nor announced to its peers; the deletion or replacement
removes every connection registered before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import msgspec

from .errors import StorageError


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


class Held(NamedTuple):
    """The connections, ``(connection_id, role)``, that an instance holds on one
    session, of ``epoch`` (None: of whichever session has the id)."""

    session_id: str
    connections: Sequence[tuple[str, str]]
    epoch: str | None = None


class Park(NamedTuple):
    """A state this instance owes a session (:meth:`PresenceStore.park_many`): the
    session of ``epoch`` (None: whichever has the id), and this instance's connections
    to it whose leave failed, ``(connection_id, role)``, left first in the same step."""

    session_id: str
    epoch: str | None = None
    leaving: Sequence[tuple[str, str]] = ()


class Parked(NamedTuple):
    """What a park found: the session's connections then (on every instance), whether
    it wrote the session ``disconnected``, and the session's stored state after."""

    connections: int
    wrote: bool
    state: str


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

    async def join(
        self, session_id: str, connection_id: str, role: str, *, epoch: str | None = None
    ) -> int:
        """Register a connection; the session-wide count after it. With ``epoch``,
        only in the session of that epoch: else SessionNotFound, nothing registered."""
        ...

    async def leave(
        self, session_id: str, connection_id: str, role: str, *, epoch: str | None = None
    ) -> int:
        """Unregister a connection; the session-wide count after it. With ``epoch``,
        SessionNotFound for a session of another epoch (nothing of it touched)."""
        ...

    async def leave_all(
        self,
        session_id: str,
        connections: Sequence[tuple[str, str]],
        *,
        epoch: str | None = None,
    ) -> int:
        """Unregister several ``(connection_id, role)`` at once; the count after. With
        ``epoch``, as :meth:`leave`."""
        ...

    async def refresh(self, held: Sequence[Held]) -> Sequence[str]:
        """Heartbeat: every connection this instance holds, by session, in one round
        trip. Those of a session whose epoch is not the one they are held with (it
        was deleted, or replaced under its id) are not registered again: the session
        stored under the id is left as it is, and no error is raised for them.
        Returns the sessions some of whose connections it registered again (they had
        gone missing: taken for dead after this instance stalled, or lost with the
        store, for longer than the heartbeat) and that the store holds as
        ``disconnected`` (another instance parked them meanwhile); the others need
        nothing written, and are not named."""
        ...

    async def count(self, session_id: str) -> int:
        """Connections to the session on every instance, dead ones not counted."""
        ...

    async def counts(self, session_ids: Sequence[str]) -> list[int]:
        """:meth:`count` of each session, in one round trip."""
        ...

    async def sweep_dead(self) -> int:
        """Park the sessions of instances that died (their heartbeat ran out): each
        one left with no connection is written ``disconnected``, once however many
        instances sweep at once, and none that a connection attached to meanwhile,
        nor one closed, expired or deleted. How many it wrote."""
        ...

    async def park_many(self, parks: Sequence[Park]) -> list[Parked | StorageError]:
        """For each park, in one round trip: its ``leaving`` left, then the session
        written ``disconnected`` if no connection of any instance is registered (dead
        ones swept first), in one step with that check: never over a connection
        registered meanwhile. Only over ``active`` or ``idle``, and not an expired
        session. Each one's outcome in order, or the error of that park alone
        (SessionNotFound for a session of another epoch than its ``epoch``, nothing
        touched); StorageError raised if the store fails the whole call."""
        ...

    async def hold(self, sessions: Sequence[tuple[str, str | None]]) -> None:
        """Record the sessions ``(session_id, epoch)`` as this instance's again, one
        heartbeat on, as a join does, though no connection of it is left there: it
        owes them a state, which a survivor's sweep writes should it die first."""
        ...

    def on_presence(self, callback: Callable[[PresenceNotice], object] | None) -> None:
        """Call ``callback`` with every notice for the sessions this instance
        subscribes to (its own changes included; see ``instance``)."""
        ...
