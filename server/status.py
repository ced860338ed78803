"""SessionStatus: a live session's state as its actor keeps it (``active``, ``idle``,
``disconnected``, ``closed``), each change written to the store, and the activity that
keeps the session's TTL sliding."""

from __future__ import annotations

import contextlib

import structlog

from bamboo_session.persistence.base import SessionExpired, SessionNotFound, Storage
from bamboo_session.protocol.models import SessionState

log = structlog.get_logger("bamboo_session.actor")


class SessionStatus:
    __slots__ = ("session_id", "state", "storage", "ttl")

    def __init__(
        self, session_id: str, state: SessionState, storage: Storage, ttl: int | None = None
    ) -> None:
        self.session_id = session_id
        self.state = state
        self.storage = storage
        self.ttl = ttl  # seconds of inactivity before it expires; None: never

    async def become(self, state: SessionState) -> None:
        """Change to ``state`` (InvalidTransition if it may not), in the store too."""
        if state == self.state:
            return
        self.state.check_transition(state)
        try:
            await self.storage.update_session_state(self.session_id, state)
        except SessionExpired:
            # Expired under our feet: the state stays in memory only, and cleanup
            # removes the session; a state change is not activity that revives it.
            log.info("session expired", state=state.value)
        self.state = state

    async def touch(self) -> None:
        """Activity: the session's TTL starts again."""
        with contextlib.suppress(SessionExpired, SessionNotFound):
            await self.storage.touch(self.session_id)

    async def check(self, idle: bool, traffic: bool) -> bool:
        """A timer's look at a connected session: ``traffic`` (peers sent frames since
        the last look, pings included) is activity, and its TTL starts again, as on
        every append; ``idle`` (no frame for the idle timeout) makes it idle. Whether
        the session is still alive."""
        if traffic:
            await self.touch()
        if idle and self.state == SessionState.ACTIVE:
            await self.become(SessionState.IDLE)
        metadata = await self.storage.get_metadata(self.session_id)
        return metadata is not None and not metadata.is_expired()
