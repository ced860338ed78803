"""PresenceRelay: what other processes' presence tells this process's session actors,
on a store several processes share (server/presence.py hands it each notice).

A peer that joined or left the session elsewhere is announced to the session's peers
here (a ``presence`` frame, by its actor's room); a session some of whose connections
a heartbeat registered again (another instance had swept them as dead, and may have
parked the session) has its actor told, which writes its state again
(server/control.py).
"""

from __future__ import annotations

from .actors import ActorRegistry
from .commands import Announce, RegisteredAgain
from .presence import PresenceNotice


class PresenceRelay:
    """Presence notices and refreshes, posted to the live actors they concern."""

    __slots__ = ("actors",)

    def __init__(self, actors: ActorRegistry) -> None:
        self.actors = actors

    def announce(self, notice: PresenceNotice) -> None:
        """Another process's peer joined or left a session: its peers here hear it."""
        actor = self.actors.get(notice.session_id)
        if actor is not None and actor.accepting and actor.room.outboxes:
            actor.post(
                Announce(notice.connection_id, notice.role, notice.joined, notice.connections)
            )

    def registered_again(self, session_id: str) -> None:
        """A heartbeat registered some of the session's connections here again."""
        if (actor := self.actors.get(session_id)) is not None and actor.accepting:
            actor.post(RegisteredAgain())
